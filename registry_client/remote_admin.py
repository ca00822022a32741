"""`remote add|ls|rm`: edit the named remotes of the user's config file.

Edits go through tomlkit, which keeps the file's comments, order and layout: only the
remote's table (and `default_remote`) change. The result is checked like any config
before it replaces the file (config.write_config_text: atomic, 0600, symlink-refusing).
Remotes of the site file are shown with their source but never written: the user's file
can only override them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from registry_client.backends import OPTIONS as REMOTE_OPTIONS
from registry_client.config import (
    LOCAL_REMOTE,
    Config,
    RemoteConfig,
    check_document,
    remote_from_table,
    write_config_text,
)
from registry_client.errors import ConfigError, NotFound, UsageError
from registry_client.names import SCHEME_TYPES, check_segment
from registry_client.schema import Kind


def _from_url(url: str) -> tuple[str, dict[str, Any]]:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEME_TYPES or not rest:
        raise UsageError(
            f"remote URL {url!r}: expected s3://BUCKET[/PREFIX], "
            "swift://CONTAINER[/PREFIX], azure://CONTAINER[/PREFIX], gs://BUCKET[/PREFIX] "
            "or file:///DIR"
        )
    if scheme == "file":
        if not rest.startswith("/"):
            raise UsageError(f"remote URL {url!r}: file:// needs an absolute path")
        return scheme, {"path": rest.rstrip("/") or "/"}
    bucket, _, prefix = rest.partition("/")
    options: dict[str, Any] = {"container" if scheme == "azure" else "bucket": bucket}
    if prefix.strip("/"):
        options["prefix"] = prefix.strip("/")
    return SCHEME_TYPES[scheme], options


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
    _check_endpoint(table)
    remote = remote_from_table(name, table, config.path)  # same validation as loading

    def edit(doc: Any) -> None:
        import tomlkit

        remotes = doc.get("remotes")
        if remotes is None:
            remotes = doc["remotes"] = tomlkit.table(is_super_table=True)
        new = tomlkit.table()
        new.update(table)
        remotes[name] = new
        if default:
            doc["default_remote"] = name

    edit_user_config(config, edit)
    config.remotes[name] = remote
    if default:
        config.default_remote = name
    return remote


def _check_endpoint(table: dict[str, Any]) -> None:
    for key in ("endpoint_url", "auth_url", "account_url"):
        value = table.get(key)
        if isinstance(value, str) and not value.startswith(("http://", "https://")):
            raise UsageError(
                f"--{key.replace('_', '-')} {value!r}: expected a URL starting with "
                "http:// or https://",
                hint=f"e.g. --{key.replace('_', '-')} https://{value}",
            )


def _typed(kind: str, key: str, value: Any) -> Any:
    """A command-line string as the type the config file holds (`--option insecure=true`
    is a boolean); keys the kind does not know stay strings, refused by the check."""
    schema = REMOTE_OPTIONS.get(kind, {})
    found = schema.get(key) if isinstance(value, str) else None
    return found.from_text(value) if isinstance(found, Kind) else value


def list_remotes(config: Config) -> list[dict[str, Any]]:
    from registry_client.config import local_remote

    remotes = dict(config.remotes)
    remotes.setdefault(LOCAL_REMOTE, local_remote())
    return [
        {**r.public(), "default": name == config.default_remote, "source": r.source or "built-in"}
        for name, r in sorted(remotes.items())
    ]


def remove_remote(config: Config, name: str) -> None:
    remote = config.remotes.get(name)
    if remote is None:
        raise NotFound(
            f"no remote named {name!r} in {config.path}", hint="see `registry-client remote ls`"
        )
    if remote.source != str(config.path):
        raise UsageError(
            f"remote {name!r} is defined in the site config {remote.source}, not in your file",
            hint="ask the node's admin, or override it in yours with `registry-client remote add`",
        )

    def edit(doc: Any) -> None:
        del doc["remotes"][name]
        if doc.get("default_remote") == name:
            del doc["default_remote"]

    edit_user_config(config, edit)
    del config.remotes[name]


def edit_user_config(config: Config, edit: Callable[[Any], None]) -> None:
    """Apply `edit` to the user's file as a tomlkit document, check, write."""
    import sys

    import tomlkit

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

    try:
        text = config.path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {config.path}: {exc}") from None
    try:
        doc = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(f"cannot read config {config.path}: {exc}") from None
    edit(doc)
    new_text = tomlkit.dumps(doc)
    data = tomllib.loads(new_text)
    check_document(config.path, data)
    for remote_name, table in data.get("remotes", {}).items():
        remote_from_table(remote_name, table, config.path)
    write_config_text(config.path, new_text)
