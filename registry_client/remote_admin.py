"""`remote add|ls|rm`: edit the named remotes of the config file."""

from __future__ import annotations

from typing import Any

from registry_client.backends import OPTIONS as REMOTE_OPTIONS
from registry_client.config import Config, RemoteConfig, remote_from_table, save_config
from registry_client.errors import NotFound, UsageError
from registry_client.names import check_segment
from registry_client.schema import Kind


def _from_url(url: str) -> tuple[str, dict[str, Any]]:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("s3", "swift", "file") or not rest:
        raise UsageError(
            f"remote URL {url!r}: expected s3://BUCKET[/PREFIX], "
            "swift://CONTAINER[/PREFIX] or file:///DIR"
        )
    if scheme == "file":
        if not rest.startswith("/"):
            raise UsageError(f"remote URL {url!r}: file:// needs an absolute path")
        return scheme, {"path": rest.rstrip("/") or "/"}
    bucket, _, prefix = rest.partition("/")
    options: dict[str, Any] = {"bucket": bucket}
    if prefix.strip("/"):
        options["prefix"] = prefix.strip("/")
    return scheme, options


def add_remote(
    config: Config,
    name: str,
    url: str,
    *,
    default: bool = False,
    options: dict[str, Any] | None = None,
) -> RemoteConfig:
    check_segment(name, "remote name")
    kind, base = _from_url(url)
    extra = {k: _typed(kind, k, v) for k, v in (options or {}).items() if v not in (None, "")}
    table = {"type": kind, **base, **extra}
    remote = remote_from_table(name, table, config.path)  # same validation as loading
    config.remotes[name] = remote
    if default:
        config.default_remote = name
    save_config(config)
    return remote


def _typed(kind: str, key: str, value: Any) -> Any:
    """A command-line string as the type the config file holds (`--option insecure=true`
    is a boolean); keys the kind does not know stay strings, refused by the check."""
    schema = REMOTE_OPTIONS.get(kind, {})
    found = schema.get(key) if isinstance(value, str) else None
    return found.from_text(value) if isinstance(found, Kind) else value


def list_remotes(config: Config) -> list[dict[str, Any]]:
    from registry_client.config import local_remote

    remotes = dict(config.remotes)
    remotes.setdefault("local", local_remote())
    return [
        {**r.public(), "default": name == config.default_remote}
        for name, r in sorted(remotes.items())
    ]


def remove_remote(config: Config, name: str) -> None:
    if name not in config.remotes:
        raise NotFound(f"no remote named {name!r} in {config.path}")
    del config.remotes[name]
    if config.default_remote == name:
        config.default_remote = "local"
    save_config(config)
