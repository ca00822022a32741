"""Storage kinds behind one interface (see base.Backend): file, s3, swift, azure, gcs.

Installed as `registry_client.backends`. Modules are imported lazily, per kind, so a
cache hit never pays for boto3 or swiftclient. `OPTIONS` says which keys a remote of
each kind takes in the config file, and of what type (registry_client.schema checks
them when the config is read, so a misspelt key is refused, never ignored). The cloud
SDKs are optional extras (`registry-client[azure]`, `[gcs]`): a missing one is a usage
error naming the extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from registry_client.schema import (
    BOOLEAN,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    PROXY_LIST,
    STRING,
    Kind,
    one_of,
)

if TYPE_CHECKING:
    from registry_client.backends.base import Backend
    from registry_client.config import RemoteConfig

_KINDS = {
    "file": "registry_client.backends.file:FileBackend",
    "s3": "registry_client.backends.s3:S3Backend",
    "swift": "registry_client.backends.swift:SwiftBackend",
    "azure": "registry_client.backends.azure:AzureBackend",
    "gcs": "registry_client.backends.gcs:GcsBackend",
}
#: the optional extra that brings each kind's SDK, and the top-level modules it installs
_EXTRAS = {"azure": ("azure", ("azure",)), "gcs": ("gcs", ("google", "google_crc32c"))}

_COMMON = {"type": STRING, "prefix": STRING}
_CONNECTIONS = {
    "max_connections": POSITIVE_INT,
    "connect_timeout": POSITIVE_NUMBER,
    "read_timeout": POSITIVE_NUMBER,
}
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
        "cache_proxies": PROXY_LIST,  # docs/fleet.md
    },
    "swift": {
        **_COMMON,
        **dict.fromkeys(_SWIFT_KEYS, STRING),
        "auth_version": _AUTH_VERSION,
        "timeout": POSITIVE_NUMBER,
        "insecure": BOOLEAN,
        "max_connections": POSITIVE_INT,
        "cache_proxies": PROXY_LIST,  # docs/fleet.md
        "temp_url_key": STRING,  # for the TempURLs site caches serve
    },
    "azure": {
        **_COMMON,
        **dict.fromkeys(("bucket", "container", "account_url", "account", "api_version"), STRING),
        **dict.fromkeys(("account_key", "sas_token", "connection_string"), STRING),
        **_CONNECTIONS,
    },
    "gcs": {
        **_COMMON,
        **dict.fromkeys(("bucket", "endpoint_url", "credentials_file", "project"), STRING),
        "anonymous": BOOLEAN,
        **_CONNECTIONS,
    },
}


def open_backend(remote: RemoteConfig) -> Backend:
    """Build the backend for a configured (or direct-URL) remote."""
    from registry_client.errors import ConfigError

    target = _KINDS.get(remote.type)
    if target is None:
        raise ConfigError(f"unknown remote type {remote.type!r}")
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra, packages = _EXTRAS.get(remote.type, ("", ()))
        if not (exc.name or "").startswith(packages) or not extra:
            raise
        raise ConfigError(
            f"{remote.type} remotes need the optional {extra!r} extra ({exc.name} is missing)",
            hint=f"pip install 'registry-client[{extra}]'",
        ) from None
    backend: Backend = getattr(module, cls_name).from_remote(remote)
    return backend
