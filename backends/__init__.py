"""Storage kinds behind one interface (see base.Backend): file, s3, swift.

Installed as `registry_client.backends`. Modules are imported lazily, per kind, so a
cache hit never pays for boto3 or swiftclient.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from registry_client.backends.base import Backend
    from registry_client.config import RemoteConfig

_KINDS = {
    "file": "registry_client.backends.file:FileBackend",
    "s3": "registry_client.backends.s3:S3Backend",
    "swift": "registry_client.backends.swift:SwiftBackend",
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
