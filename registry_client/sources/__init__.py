"""Sources: other registries that images are fetched from (docker://, library://, shub://).

A source is read-only. Each one names the content upstream (`Version.key`: library
hash, Hub md5, docker manifest digest) and produces the image file into a temp path
the caller owns (a verified download, or a SIF built from verified docker layers).
Locks, temp files, publishing and the cache's indexes are the caller's
(registry_client.fetch), never a source's. One module (or folder) per source:

    library.py   the Sylabs Library API
    shub.py      the Singularity Hub API
    docker/      the OCI distribution API (registry.py) and the layer → SIF builder
    http.py      HTTP plumbing they share (sessions, auth scoping, verified downloads)
"""

from __future__ import annotations

import abc
import importlib
import os
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from registry_client.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from registry_client.acquire import Producer
    from registry_client.config import Config
    from registry_client.context import Context
    from registry_client.names import FetcherRef

#: scheme -> "module:class", imported only when a reference of that scheme is pulled
KINDS = {
    "docker": "registry_client.sources.docker:DockerSource",
    "library": "registry_client.sources.library:LibrarySource",
    "shub": "registry_client.sources.shub:ShubSource",
}


@dataclass(frozen=True)
class FetchOptions:
    """Per-command settings; None means environment, then config file, then default."""

    arch: str | None = None
    library_url: str | None = None
    shub_url: str | None = None


@dataclass(frozen=True)
class Version:
    """What the source says the image is now, learnt before any download."""

    key: tuple[str, ...]  # names the content upstream: lock id and version → sha256 index
    sha256: str | None = None  # when the source publishes it (library)
    record: dict[str, Any] = field(default_factory=dict)  # kept in the tag's cache record
    aliases: tuple[tuple[str, ...], ...] = ()  # other keys naming the same content


@dataclass(frozen=True)
class Download:
    """An image that is one plain HTTP download (after `resolve`), and what its registry
    says the bytes are: `copy` streams it to a bucket without the node cache."""

    url: str
    session: Any  # requests.Session, with the source's TLS settings
    headers: dict[str, str]  # credentials for `url`'s origin only (never for a redirect)
    label: str  # names it in messages, without credentials
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None


class Source(abc.ABC):
    """One reference on one registry: read-only, it resolves and produces an image."""

    scheme = ""
    text = ""  # the canonical reference, shown and recorded
    remote_id = ""  # the registry endpoint, for the cache's tag records

    @abc.abstractmethod
    def slot(self) -> tuple[str, str, str]:
        """(collection, name, tag) of the tag record: path-safe, one per arch."""

    def pinned(self, cache: Any) -> str | None:
        """sha256 known without the network (a digest-pinned reference seen before)."""
        return None

    @abc.abstractmethod
    def resolve(self) -> Version:
        """Ask the registry what the reference names now."""

    @abc.abstractmethod
    def producer(self, ctx: Context, version: Version) -> Producer:
        """After `resolve`, on a cache miss: how the image is made in the cache — a verified
        download or a build (registry_client.acquire); the pipeline runs it."""

    def download(self) -> Download | None:
        """After `resolve`: the image as one download with a digest to check it by, or
        None (a docker image is built here; an image the registry records no digest of)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def open_source(ctx: Context, ref: FetcherRef, options: FetchOptions) -> Source:
    target = KINDS.get(ref.scheme)
    if target is None:
        raise UsageError(f"{ref.scheme}:// is not a source")
    module_name, _, cls_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    source: Source = cls(ctx, ref.body, options)
    return source


# -- settings shared by the sources ------------------------------------------------------


def setting(config: Config, section: str, key: str) -> str | None:
    """`[section] key = ...` from the config file; a token there needs a 0600 file."""
    table = config.settings.get(section)
    value = table.get(key) if isinstance(table, dict) else None
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{config.path}: [{section}] {key} must be a string")
    if value and key == "token":
        mode = stat.S_IMODE(os.stat(config.path).st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{config.path} holds a secret but is readable by others",
                hint=f"run: chmod 600 {config.path}",
            )
    return value or None


def endpoint(cli: str | None, env: str, config: Config, section: str) -> str | None:
    """A source's base URL: the command line, then the environment, then the config."""
    return cli or os.environ.get(env) or setting(config, section, "url")
