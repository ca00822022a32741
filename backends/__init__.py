"""Storage kinds behind one interface (see base.Backend): file, s3, swift.

Installed as `registry_client.backends`. Modules are imported lazily, per kind, so a
cache hit never pays for boto3 or swiftclient. `OPTIONS` says which keys a remote of
each kind takes in the config file, and of what type (registry_client.schema checks
them when the config is read, so a misspelt key is refused, never ignored).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from registry_client.schema import BOOLEAN, POSITIVE_INT, POSITIVE_NUMBER, STRING, Kind, one_of

if TYPE_CHECKING:
    from registry_client.backends.base import Backend
    from registry_client.config import RemoteConfig

_KINDS = {
    "file": "registry_client.backends.file:FileBackend",
    "s3": "registry_client.backends.s3:S3Backend",
    "swift": "registry_client.backends.swift:SwiftBackend",
}

_COMMON = {"type": STRING, "prefix": STRING}
_S3_KEYS = (
    "bucket",
    "endpoint_url",
    "region",
    "profile",
    "access_key_id",
    "secret_access_key",
    "session_token",
)
# The names of swift_auth's settings (the OS_* / ST_* variables in lower case).
_SWIFT_KEYS = (
    "bucket",
    "container",
    "segment_container",
    "auth_url",
    "user",
    "key",
    "username",
    "user_id",
    "password",
    "project_name",
    "project_id",
    "user_domain_name",
    "user_domain_id",
    "project_domain_name",
    "project_domain_id",
    "application_credential_id",
    "application_credential_secret",
    "interface",
    "region_name",
    "storage_url",
    "auth_token",
    "cacert",
)
_AUTH_VERSION = Kind(
    '"1" (tempauth) or "3" (Keystone)',
    lambda v: isinstance(v, (str, int)) and not isinstance(v, bool),
)

#: kind → the keys its remotes take, and their types
OPTIONS = {
    "file": {**_COMMON, "path": STRING, "max_connections": POSITIVE_INT},
    "s3": {
        **_COMMON,
        **dict.fromkeys(_S3_KEYS, STRING),
        "addressing_style": one_of("auto", "path", "virtual"),
        "max_connections": POSITIVE_INT,
        "connect_timeout": POSITIVE_NUMBER,
        "read_timeout": POSITIVE_NUMBER,
    },
    "swift": {
        **_COMMON,
        **dict.fromkeys(_SWIFT_KEYS, STRING),
        "auth_version": _AUTH_VERSION,
        "timeout": POSITIVE_NUMBER,
        "insecure": BOOLEAN,
        "max_connections": POSITIVE_INT,
    },
}


def open_backend(remote: RemoteConfig) -> Backend:
    """Build the backend for a configured (or direct-URL) remote."""
    from registry_client.errors import ConfigError

    target = _KINDS.get(remote.type)
    if target is None:
        raise ConfigError(f"unknown remote type {remote.type!r}")
    module_name, _, cls_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    backend: Backend = cls.from_remote(remote)
    return backend
