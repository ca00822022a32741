"""OpenStack Swift authentication (tempauth v1, Keystone v3, pre-made tokens), shared
token renewal for per-thread connections, and Swift error translation."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
import swiftclient.client as swift_client
from swiftclient.client import Connection
from swiftclient.exceptions import ClientException
from swiftclient.utils import LengthWrapper

from registry_client.backends._wire import first_line, is_transport_error, retry_after
from registry_client.errors import (
    AuthError,
    ConfigError,
    IntegrityError,
    NotFound,
    ObjectChanged,
    RegistryClientError,
    RemoteUnavailable,
)

# swiftclient logs the first characters of tokens and keys at INFO; never show any.
swift_client.logger_settings["reveal_sensitive_prefix"] = 0
MAX_TOKEN_ANSWER = 8 * 1024 * 1024


# -- errors -----------------------------------------------------------------------------


def translate(exc: BaseException, what: str) -> RegistryClientError:
    """swiftclient/requests errors → our tree; messages carry names, never credentials."""
    if isinstance(exc, RegistryClientError):
        return exc
    if isinstance(exc, ClientException):
        return _from_status(
            exc.http_status or 0, exc.http_reason or exc.msg, what, exc.http_response_headers or {}
        )
    if isinstance(exc, (requests.RequestException, OSError)) or is_transport_error(exc):
        return RemoteUnavailable(f"{what}: {type(exc).__name__}: {first_line(exc)}")
    return RegistryClientError(f"{what}: {type(exc).__name__}")


def _from_status(
    status: int, reason: str, what: str, headers: Mapping[str, str]
) -> RegistryClientError:
    text = f"{what}: HTTP {status} {reason}".strip() if status else f"{what}: {reason}"
    if status == 404:
        return NotFound(text)
    if status in (401, 403):
        return AuthError(text, hint="check the Swift credentials (ST_* / OS_* or the remote)")
    if status == 412:
        return ObjectChanged(f"{what}: the object changed during the transfer")
    if status == 422:
        return IntegrityError(f"{what}: the server's checksum differs from the data sent")
    # 409: an SLO whose segment no longer validates, or a PUT timestamp race; reads
    # diagnose the first case, both may be gone on the next attempt.
    if status >= 500 or status in (408, 409, 429, 498):
        return RemoteUnavailable(text, retry_after=retry_after(headers))
    return RegistryClientError(text)


# -- auth -------------------------------------------------------------------------------

V1_ENV = {"auth_url": ("ST_AUTH",), "user": ("ST_USER",), "key": ("ST_KEY",)}
V3_ENV = {
    "auth_url": ("OS_AUTH_URL",),
    "username": ("OS_USERNAME",),
    "user_id": ("OS_USER_ID",),
    "password": ("OS_PASSWORD",),
    "project_name": ("OS_PROJECT_NAME", "OS_TENANT_NAME"),
    "project_id": ("OS_PROJECT_ID", "OS_TENANT_ID"),
    "user_domain_name": ("OS_USER_DOMAIN_NAME",),
    "user_domain_id": ("OS_USER_DOMAIN_ID",),
    "project_domain_name": ("OS_PROJECT_DOMAIN_NAME",),
    "project_domain_id": ("OS_PROJECT_DOMAIN_ID",),
    "application_credential_id": ("OS_APPLICATION_CREDENTIAL_ID",),
    "application_credential_secret": ("OS_APPLICATION_CREDENTIAL_SECRET",),
    "interface": ("OS_INTERFACE", "OS_ENDPOINT_TYPE"),
}
COMMON_ENV = {
    "storage_url": ("OS_STORAGE_URL",),
    "auth_token": ("OS_AUTH_TOKEN",),
    "region_name": ("OS_REGION_NAME",),
    "cacert": ("OS_CACERT",),
}
V3_IDENTITY = ("username", "user_id", "password", "application_credential_id")


@dataclass(frozen=True)
class SwiftAuth:
    """Where and how to authenticate. Secret fields are kept out of repr()."""

    version: str | None  # "1" (tempauth), "3" (Keystone) or None (pre-made token only)
    auth_url: str = ""
    user: str = ""
    key: str = field(default="", repr=False)
    username: str = ""
    user_id: str = ""
    password: str = field(default="", repr=False)
    project_name: str = ""
    project_id: str = ""
    user_domain_name: str = ""
    user_domain_id: str = ""
    project_domain_name: str = ""
    project_domain_id: str = ""
    application_credential_id: str = ""
    application_credential_secret: str = field(default="", repr=False)
    interface: str = "public"  # Keystone endpoint interface: public / internal / admin
    region_name: str = ""
    storage_url: str = ""
    auth_token: str = field(default="", repr=False)
    cacert: str = ""

    @classmethod
    def from_sources(cls, options: Mapping[str, Any], env: Mapping[str, str]) -> SwiftAuth:
        version = _auth_version(options, env)
        table = {**COMMON_ENV, **(V1_ENV if version == "1" else V3_ENV if version else {})}
        values = {name: _setting(options, env, name, names) for name, names in table.items()}
        values = {k: v for k, v in values.items() if v}
        if "interface" in values:  # OS_ENDPOINT_TYPE says "publicURL", v2 style
            values["interface"] = values["interface"].removesuffix("URL")
        auth = cls(version, **values)
        auth.check()
        return auth

    @property
    def renewable(self) -> bool:
        return self.version is not None

    def check(self) -> None:
        """Name what is missing (never a value) before any request is sent."""
        if self.version == "1":
            need = {
                "auth_url (ST_AUTH)": self.auth_url,
                "user (ST_USER)": self.user,
                "key (ST_KEY)": self.key,
            }
        elif self.version == "3":
            need = {"auth_url (OS_AUTH_URL)": self.auth_url}
            if not self.application_credential_id:
                need["username or user_id (OS_USERNAME)"] = self.username or self.user_id
                need["password (OS_PASSWORD)"] = self.password
            else:
                need["application_credential_secret"] = self.application_credential_secret
        else:
            need = {
                "storage_url (OS_STORAGE_URL)": self.storage_url,
                "auth_token (OS_AUTH_TOKEN)": self.auth_token,
            }
        missing = [name for name, value in need.items() if not value]
        if missing:
            raise AuthError(
                f"Swift credentials incomplete: missing {', '.join(missing)}",
                hint="set ST_AUTH/ST_USER/ST_KEY, the OS_* variables of an "
                "openrc file, or the same keys in the remote's config",
            )


def _setting(
    options: Mapping[str, Any], env: Mapping[str, str], name: str, env_names: Sequence[str]
) -> str:
    if options.get(name) not in (None, ""):
        return str(options[name])
    return next((env[n] for n in env_names if env.get(n)), "")


def _auth_version(options: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    """Explicit auth_version, else what the given settings look like."""
    explicit = str(options.get("auth_version") or "")
    if explicit:
        return _normalize_version(explicit)
    if options.get("user") or options.get("key"):
        return "1"
    if any(options.get(k) for k in V3_IDENTITY):
        return "3"
    if options.get("auth_url"):
        return "1" if "/auth/v1" in str(options["auth_url"]) else "3"
    if env.get("ST_AUTH"):
        return _normalize_version(env.get("ST_AUTH_VERSION") or "1")
    if env.get("OS_AUTH_URL"):
        return _normalize_version(env.get("OS_IDENTITY_API_VERSION") or "3")
    return None


def _normalize_version(text: str) -> str:
    value = text.strip().lower().lstrip("v")
    if value in ("1", "1.0"):
        return "1"
    if value in ("3", "3.0"):
        return "3"
    raise ConfigError(
        f"Swift auth_version {text!r} is not supported",
        hint="use 1 (tempauth/swauth) or 3 (Keystone v3)",
    )


def authenticate(auth: SwiftAuth, timeout: float, verify: bool | str) -> tuple[str, str]:
    """A fresh (storage URL, token)."""
    if auth.version == "1":
        try:
            url, token = swift_client.get_auth_1_0(
                auth.auth_url,
                auth.user,
                auth.key,
                timeout=timeout,
                insecure=verify is False,
                cacert=verify if isinstance(verify, str) else None,
            )
        except ClientException as exc:
            raise auth_failure(auth, exc.http_status or 0, exc.http_reason or "") from None
        except Exception as exc:
            raise translate(exc, f"Swift auth at {_shown(auth.auth_url)}") from None
    else:
        url, token = keystone_v3(auth, timeout, verify)
    return auth.storage_url or url, token


def auth_failure(auth: SwiftAuth, status: int, reason: str) -> RegistryClientError:
    """What an answer other than a token means, said about the auth URL, never about an
    image: a busy or failing service is retried (exit 6), anything else is an auth error
    (exit 5). Swift answers a wrong auth URL with 404, 412 ("Bad URL"), 400 or even 200
    (another endpoint): reporting those as "not found" or "changed during the download"
    sends users looking in the wrong place."""
    variable = "ST_AUTH" if auth.version == "1" else "OS_AUTH_URL"
    where = f"{'Swift auth' if auth.version == '1' else 'Keystone'} at {_shown(auth.auth_url)}"
    text = f"{where}: HTTP {status} {reason}".strip()
    if status >= 500 or status in (408, 429):
        return RemoteUnavailable(text)
    if status in (401, 403):
        who = "ST_USER/ST_KEY" if auth.version == "1" else "the OS_* credentials"
        return AuthError(f"{text}: credentials refused", hint=f"check {who} (or the remote's)")
    example = "http://HOST:8080/auth/v1.0" if auth.version == "1" else "https://HOST:5000/v3"
    return AuthError(
        f"{text}: not a working {'auth' if auth.version == '1' else 'Keystone'} endpoint",
        hint=f"check {variable} (or the remote's auth_url), e.g. {example}",
    )


def _shown(url: str) -> str:
    """An auth URL fit for messages: no user info, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def keystone_v3(auth: SwiftAuth, timeout: float, verify: bool | str) -> tuple[str, str]:
    """POST /v3/auth/tokens; the object-store endpoint comes from the service catalog."""
    where = f"Keystone at {_shown(auth.auth_url)}"
    try:
        resp = requests.post(
            _tokens_url(auth.auth_url),
            json=_v3_body(auth),
            timeout=timeout,
            verify=verify,
            headers={"Accept": "application/json"},
            stream=True,
        )
    except requests.RequestException as exc:
        raise RemoteUnavailable(f"{where}: {type(exc).__name__}") from None
    with resp:
        if resp.status_code not in (200, 201):
            raise auth_failure(auth, resp.status_code, resp.reason or "")
        token = resp.headers.get("X-Subject-Token", "")
        catalog = _catalog(resp, where)
    url = auth.storage_url or _object_store_url(catalog, auth.region_name, auth.interface)
    if not token or not url:
        raise AuthError(
            f"{where} returned no token or no {auth.interface} object-store "
            f"endpoint{' in ' + auth.region_name if auth.region_name else ''}",
            hint="set region_name / OS_REGION_NAME, or storage_url",
        )
    return url, token


def _catalog(resp: requests.Response, where: str) -> list[Any]:
    """The service catalog of a token answer, read bounded (catalogs are kilobytes)."""
    body = bytearray()
    try:
        for piece in resp.iter_content(64 * 1024):
            body += piece
            if len(body) > MAX_TOKEN_ANSWER:
                raise AuthError(f"{where}: a token answer larger than {MAX_TOKEN_ANSWER} bytes")
        data = json.loads(body)
    except requests.RequestException as exc:
        raise RemoteUnavailable(f"{where}: {type(exc).__name__}") from None
    except (ValueError, RecursionError):
        return []
    token = data.get("token") if isinstance(data, dict) else None
    catalog = token.get("catalog") if isinstance(token, dict) else None
    return catalog if isinstance(catalog, list) else []


def _tokens_url(auth_url: str) -> str:
    base = auth_url.rstrip("/")
    return f"{base if base.endswith('/v3') else base + '/v3'}/auth/tokens"


def _v3_body(auth: SwiftAuth) -> dict[str, Any]:
    if auth.application_credential_id:
        credential = {
            "id": auth.application_credential_id,
            "secret": auth.application_credential_secret,
        }
        identity = {"methods": ["application_credential"], "application_credential": credential}
        return {"auth": {"identity": identity}}  # an application credential is pre-scoped
    user: dict[str, Any] = {"password": auth.password}
    if auth.user_id:
        user["id"] = auth.user_id
    else:
        user["name"] = auth.username
        user["domain"] = _domain(auth.user_domain_id, auth.user_domain_name)
    body: dict[str, Any] = {"identity": {"methods": ["password"], "password": {"user": user}}}
    if auth.project_id:
        body["scope"] = {"project": {"id": auth.project_id}}
    elif auth.project_name:
        body["scope"] = {
            "project": {
                "name": auth.project_name,
                "domain": _domain(auth.project_domain_id, auth.project_domain_name),
            }
        }
    return {"auth": body}


def _domain(domain_id: str, name: str) -> dict[str, str]:
    return {"id": domain_id} if domain_id else {"name": name or "Default"}


def _object_store_url(catalog: Iterable[Any], region: str, interface: str) -> str:
    for service in catalog:
        if not isinstance(service, dict) or service.get("type") != "object-store":
            continue
        endpoints = service.get("endpoints")
        for ep in endpoints if isinstance(endpoints, list) else []:
            if not isinstance(ep, dict):
                continue
            in_region = not region or region in (ep.get("region_id"), ep.get("region"))
            if ep.get("interface") == interface and in_region and ep.get("url"):
                return str(ep["url"])
    return ""


class TokenStore:
    """One token for all of a backend's connections, numbered by generation.

    A connection starts every request with the newest token. When one is refused (401),
    the store re-authenticates only if no newer token appeared since that request began,
    so N threads hit by one revocation cause one re-authentication.
    """

    def __init__(self, auth: SwiftAuth, timeout: float, verify: bool | str) -> None:
        self.auth = auth
        self._timeout = timeout
        self._verify = verify
        self._lock = threading.Lock()
        premade = bool(auth.storage_url and auth.auth_token)  # a token alone names no URL
        self.url = auth.storage_url if premade else ""
        self.token = auth.auth_token if premade else ""
        self.generation = 0
        self.renewals = 0

    def current(self) -> tuple[str, str, int]:
        with self._lock:
            if not self.token:
                self._authenticate()
            return self.url, self.token, self.generation

    def renew(self, refused: int) -> tuple[str, str, int]:
        """A fresh token after the one of generation `refused` got a 401."""
        with self._lock:
            if not self.token or self.generation <= refused:
                if not self.auth.renewable:
                    raise AuthError(
                        "the Swift token was refused and no credentials are set to get a new one",
                        hint="refresh OS_AUTH_TOKEN",
                    )
                self._authenticate()
            return self.url, self.token, self.generation

    def _authenticate(self) -> None:
        self.url, self.token = authenticate(self.auth, self._timeout, self._verify)
        self.generation += 1
        self.renewals += 1


class SwiftConnection(Connection):
    """A swiftclient Connection that takes its tokens from the shared store."""

    url: str | None  # set by swiftclient, and by us from the store
    token: str | None

    def __init__(self, tokens: TokenStore, **kwargs: Any) -> None:
        # swiftclient retries a 401 (once) only if it believes it holds credentials; the
        # real ones stay in the store, these markers just say "renewable".
        marker = "registry-client" if tokens.auth.renewable else None
        super().__init__(
            authurl=marker, user=marker, key=marker, retries=0, starting_backoff=0, **kwargs
        )
        self._tokens = tokens
        self._generation: int | None = None  # of the token in self.token

    def _retry(self, reset_func: Any, func: Any, *args: Any, **kwargs: Any) -> Any:
        if self.token and self._generation != self._tokens.generation:
            self.url, self.token, self._generation = self._tokens.current()
        return super()._retry(reset_func, func, *args, **kwargs)

    def get_auth(self) -> tuple[str, str]:
        # swiftclient calls this before the first request and after a 401.
        if self._generation is None:
            self.url, self.token, self._generation = self._tokens.current()
        else:
            self.url, self.token, self._generation = self._tokens.renew(self._generation)
        return self.url, self.token

    def put_object(
        self,
        container: str,
        obj: str,
        contents: Any,
        **kwargs: Any,
    ) -> str:
        # swiftclient rewinds a file body only when retries > 0; ours is re-sent once,
        # after a 401 and a new token.
        reset = contents.reset if isinstance(contents, LengthWrapper) else None
        return self._retry(reset, swift_client.put_object, container, obj, contents, **kwargs)
