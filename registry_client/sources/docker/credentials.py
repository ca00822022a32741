"""Registry credentials the way the Docker CLI finds them, and bearer tokens that renew.

Where credentials come from, first match wins:

1. REGISTRY_CLIENT_DOCKER_USERNAME / REGISTRY_CLIENT_DOCKER_PASSWORD;
2. the Docker config file ($DOCKER_CONFIG/config.json, else ~/.docker/config.json):
   `credHelpers[REGISTRY]`, else `credsStore` — a credential helper, run as
   `docker-credential-NAME get` with the server address on stdin, answering
   `{"ServerURL", "Username", "Secret"}` — then `auths[REGISTRY]` (`auth`, or
   `username`/`password`, or `identitytoken`).

A user name of `<token>` (what helpers answer for an identity token) or an `identitytoken`
entry means an OAuth2 refresh token: it is exchanged at the token service with a POST
(grant_type=refresh_token), never sent as a password.

`TokenHeaders` holds a registry's bearer token: it fetches a new one shortly before the
`expires_in` the token service gave (60 s when it gave none, as the token spec says) and
when the registry refuses the one we sent (a 401 in the middle of a long download).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry_client.errors import AuthError

ENV_USER = "REGISTRY_CLIENT_DOCKER_USERNAME"
ENV_PASSWORD = "REGISTRY_CLIENT_DOCKER_PASSWORD"
IDENTITY_TOKEN_USER = "<token>"
HUB_SERVER = "https://index.docker.io/v1/"  # the key Docker uses for Docker Hub
HELPER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
HELPER_TIMEOUT = 60.0
MAX_HELPER_OUTPUT = 64 * 1024
MAX_CONFIG = 4 * 1024 * 1024
DEFAULT_TOKEN_LIFETIME = 60  # seconds, the token spec's default for a missing expires_in
RENEW_BEFORE = 10  # seconds before expiry


@dataclass(frozen=True)
class RegistryLogin:
    """A user name and secret for one registry; an identity token when user is <token>."""

    user: str
    secret: str

    @property
    def is_identity_token(self) -> bool:
        return self.user == IDENTITY_TOKEN_USER

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.user}:{self.secret}".encode()).decode()

    def __repr__(self) -> str:  # keep secrets out of tracebacks
        return f"RegistryLogin(user={self.user!r})"


def docker_config_path() -> Path:
    folder = os.environ.get("DOCKER_CONFIG")
    return Path(folder) / "config.json" if folder else Path.home() / ".docker" / "config.json"


def config_keys(registry: str) -> list[str]:
    """How config.json may name a registry (Docker Hub has a few spellings)."""
    if registry == "docker.io":
        return [
            HUB_SERVER,
            "index.docker.io",
            "docker.io",
            "registry-1.docker.io",
            "https://registry-1.docker.io",
        ]
    return [
        registry,
        f"https://{registry}",
        f"http://{registry}",
        f"https://{registry}/v1/",
        f"https://{registry}/v2/",
    ]


def find_login(registry: str) -> RegistryLogin | None:
    """The login for `registry`, from the environment, a credential helper or auths."""
    user, password = os.environ.get(ENV_USER), os.environ.get(ENV_PASSWORD)
    if user and password:
        return RegistryLogin(user, password)
    config = _read_config()
    helper = _helper_for(config, registry)
    if helper:
        server = HUB_SERVER if registry == "docker.io" else registry
        found = run_helper(helper, server)
        if found is not None:
            return found
    auths = config.get("auths")
    if not isinstance(auths, dict):
        return None
    for key in config_keys(registry):
        entry = auths.get(key)
        if isinstance(entry, dict) and (login := _entry_login(entry)):
            return login
    return None


def _read_config() -> dict[str, Any]:
    try:
        with open(docker_config_path(), "rb") as fh:
            data = json.loads(fh.read(MAX_CONFIG))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _helper_for(config: dict[str, Any], registry: str) -> str | None:
    helpers = config.get("credHelpers")
    if isinstance(helpers, dict):
        for key in config_keys(registry):
            if isinstance(helpers.get(key), str) and helpers[key]:
                return str(helpers[key])
    store = config.get("credsStore")
    return store if isinstance(store, str) and store else None


def run_helper(name: str, server: str) -> RegistryLogin | None:
    """`docker-credential-NAME get`, as the Docker CLI runs it; None if it has nothing."""
    if not HELPER_NAME_RE.match(name):
        raise AuthError(f"the Docker config names an invalid credential helper {name[:70]!r}")
    program = f"docker-credential-{name}"
    tool = shutil.which(program)
    if not tool:
        raise AuthError(
            f"the Docker config uses the credential helper {program}, which is not on PATH",
            hint=f"install {program}, or set {ENV_USER} and {ENV_PASSWORD}",
        )
    try:
        proc = subprocess.run(
            [tool, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=HELPER_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise AuthError(f"{program} get did not answer in {HELPER_TIMEOUT:.0f} s") from None
    out = proc.stdout[:MAX_HELPER_OUTPUT].decode(errors="replace")
    if proc.returncode != 0:
        said = (out.strip() or proc.stderr.decode(errors="replace").strip()).splitlines()
        if said and "credentials not found" in said[0].lower():
            return None
        raise AuthError(f"{program} get failed: {(said or ['no output'])[0][:200]}")
    try:
        data = json.loads(out)
    except ValueError:
        raise AuthError(f"{program} get did not answer JSON") from None
    user = data.get("Username") if isinstance(data, dict) else None
    secret = data.get("Secret") if isinstance(data, dict) else None
    if not (isinstance(user, str) and isinstance(secret, str) and secret):
        return None
    return RegistryLogin(user, secret)


def _entry_login(entry: dict[str, Any]) -> RegistryLogin | None:
    token = entry.get("identitytoken")
    if isinstance(token, str) and token:
        return RegistryLogin(IDENTITY_TOKEN_USER, token)
    if isinstance(entry.get("auth"), str) and entry["auth"]:
        try:
            text = base64.b64decode(entry["auth"], validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        user, sep, password = text.partition(":")
        return RegistryLogin(user, password) if sep and user else None
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str) and name:
        return RegistryLogin(name, secret)
    return None


# -- bearer tokens that renew ---------------------------------------------------------------


class TokenHeaders(Mapping[str, str]):
    """{"Authorization": "Bearer …"} for the current token; a live mapping, so Credentials
    built on it always send the newest one. `fetch` returns (token, lifetime seconds)."""

    def __init__(self, fetch: Callable[[], tuple[str, int | None]]) -> None:
        self._fetch = fetch
        self._lock = threading.Lock()
        self._token = ""
        self._expires = 0.0
        self._refresh()

    def _refresh(self) -> None:
        token, lifetime = self._fetch()
        lifetime = DEFAULT_TOKEN_LIFETIME if lifetime is None else lifetime
        self._token = token
        self._expires = time.monotonic() + max(lifetime - RENEW_BEFORE, 1)

    def _current(self) -> dict[str, str]:
        with self._lock:
            if time.monotonic() >= self._expires:
                self._refresh()
            return {"Authorization": f"Bearer {self._token}"}

    def renew(self, stale: Mapping[str, str]) -> bool:
        """The registry refused `stale`: fetch a new token unless another thread did."""
        with self._lock:
            if stale.get("Authorization") == f"Bearer {self._token}":
                self._refresh()
        return True

    def __getitem__(self, key: str) -> str:
        return self._current()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return 1

    def __repr__(self) -> str:
        return "TokenHeaders(<bearer token>)"
