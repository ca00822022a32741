"""Swift settings without the client libraries: what a remote's options and the OS_* / ST_*
variables say (SwiftAuth), the request bodies and catalog rules of Keystone v3, what an
object's HEAD means (object_info), and the tokens this process already holds.

Kept apart from swift_auth (which imports swiftclient and requests) so that the warm
pull's light HEAD (backends.light) reads the same settings the same way at a fraction of
the import cost, and so that a token it obtained is reused by the full client if the
pull goes on (recall_token), instead of authenticating twice.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from registry_client.backends.base import ObjectInfo
from registry_client.errors import AuthError, ConfigError

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


def _shown(url: str) -> str:
    """An auth URL fit for messages: no user info, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


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


# -- what a HEAD says ----------------------------------------------------------------------


def unquote_etag(value: str | None) -> str | None:
    return value.strip().strip('"') or None if value else None


def parse_modified(head: Mapping[str, str]) -> datetime | None:
    with contextlib.suppress(TypeError, ValueError, IndexError, KeyError):
        return parsedate_to_datetime(head["last-modified"])
    return None


def object_info(key: str, head: Mapping[str, str]) -> ObjectInfo:
    """An object's size, ETag and our metadata (X-Object-Meta-*), from its HEAD's headers
    (lower-case names)."""
    prefix = "x-object-meta-"
    meta = {k[len(prefix) :].lower(): v for k, v in head.items() if k.lower().startswith(prefix)}
    return ObjectInfo(
        key,
        int(head.get("content-length", 0)),
        unquote_etag(head.get("etag")),
        meta,
        parse_modified(head),
    )


# -- a token handed from the light HEAD to the full client --------------------------------------

_tokens: dict[SwiftAuth, tuple[str, str]] = {}
_tokens_lock = threading.Lock()


def remember_token(auth: SwiftAuth, url: str, token: str) -> None:
    """A (storage URL, token) the light HEAD obtained for `auth`, kept in memory only, for
    the full client should the pull go on in this process (take_token)."""
    with _tokens_lock:
        _tokens[auth] = (url, token)


def take_token(auth: SwiftAuth) -> tuple[str, str] | None:
    """The token remembered for `auth`, handed over once."""
    with _tokens_lock:
        return _tokens.pop(auth, None)


def recall_token(auth: SwiftAuth) -> tuple[str, str] | None:
    with _tokens_lock:
        return _tokens.get(auth)
