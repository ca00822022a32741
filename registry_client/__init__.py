"""registry-client: SIF images in object stores, pulled into a verified node cache.

The public API (docs/api.md) is what `__all__` names: `pull`, `push`, `ls`, `inspect`,
`copy`, `migrate`, a `Client` holding one config and node cache, their results, and the
exception tree. Everything else is private and may change. The names are loaded on first
use, so importing a submodule (as the console script's cache-hit path does) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # the calls (registry_client.api)
    "Client",
    "PullResult",
    "PushResult",
    "copy",
    "inspect",
    "ls",
    "migrate",
    "pull",
    "push",
    # the exception tree (registry_client.errors)
    "RegistryClientError",
    "UsageError",
    "InvalidReference",
    "ConfigError",
    "Unsupported",
    "NotFound",
    "IntegrityError",
    "UnverifiableError",
    "AuthError",
    "RemoteUnavailable",
    "ObjectChanged",
    "Interrupted",
]
_ERRORS = frozenset(__all__[__all__.index("RegistryClientError") :])

if TYPE_CHECKING:
    from registry_client.api import (
        Client,
        PullResult,
        PushResult,
        copy,
        inspect,
        ls,
        migrate,
        pull,
        push,
    )
    from registry_client.errors import (
        AuthError,
        ConfigError,
        IntegrityError,
        Interrupted,
        InvalidReference,
        NotFound,
        ObjectChanged,
        RegistryClientError,
        RemoteUnavailable,
        Unsupported,
        UnverifiableError,
        UsageError,
    )


def __getattr__(name: str) -> Any:
    """Load a public name on first use (PEP 562)."""
    import importlib

    if name in _ERRORS:
        return getattr(importlib.import_module("registry_client.errors"), name)
    if name in __all__:
        return getattr(importlib.import_module("registry_client.api"), name)
    raise AttributeError(f"module 'registry_client' has no attribute {name!r}")
