"""Pulls from other registries (docker://, library://, shub://) into the same cache.

The rules of a bucket pull (service.pull) hold for every fetcher:

    resolve (one metadata request) → cache hit? → lock → produce into a cache temp file
    → verify → publish by sha256 → remember (version → sha256, tag → sha256)

Each fetcher (a module in backends/) sits behind the small `Fetcher` interface below: it
names the content upstream (`Version.key`: library hash, Hub md5, docker manifest digest),
and produces the image file into a temp path (a verified download, or a SIF built from
verified docker layers). Locks, temp files, publishing and the indexes are shared here.
"""

from __future__ import annotations

import abc
import os
import stat
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry_client.cache import raise_for_os_error, short_id
from registry_client.errors import ConfigError, NotFound, UsageError
from registry_client.hits import PullResult, cache_hit
from registry_client.names import FetcherRef, parse_image_ref, parse_reference

if TYPE_CHECKING:
    from registry_client.service import Context

BLOB_WORKERS = 3  # layers fetched at once; each also uses parallel ranged reads


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


class Fetcher(abc.ABC):
    """One reference on one registry."""

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
    def produce(self, ctx: Context, version: Version, dest: Path) -> tuple[str, tuple[str, ...]]:
        """Write the verified image to dest; return (its sha256, what was checked)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


# -- the pull -----------------------------------------------------------------------------


def pull_fetcher(
    ctx: Context,
    ref: FetcherRef,
    *,
    output: str | None = None,
    force: bool = False,
    offline: bool = False,
    options: FetchOptions | None = None,
) -> PullResult:
    from registry_client.service import place_output

    fetcher = open_fetcher(ctx, ref, options or FetchOptions())
    try:
        result = None if force else _from_cache(ctx, fetcher, offline)
        if result is None:
            if offline:
                raise NotFound(
                    f"{fetcher.text} is not in the cache", hint="pull it once without --offline"
                )
            result = _pull(ctx, fetcher, force)
    finally:
        fetcher.close()
    return place_output(result, output) if output else result


def _from_cache(ctx: Context, fetcher: Fetcher, offline: bool) -> PullResult | None:
    """Digest-pinned and offline pulls answered without any network."""
    sha = fetcher.pinned(ctx.cache)
    if sha is None and offline:
        record = ctx.cache.resolve_ref(fetcher.remote_id, *fetcher.slot())
        sha = record.get("sha256") if record else None
    return _hit(ctx, fetcher, sha)


def _hit(ctx: Context, fetcher: Fetcher, sha: str | None) -> PullResult | None:
    return cache_hit(ctx.cache, fetcher.text, sha)


def _pull(ctx: Context, fetcher: Fetcher, force: bool) -> PullResult:
    version = fetcher.resolve()

    def cached() -> PullResult | None:
        if force:
            return None
        return _hit(ctx, fetcher, version.sha256 or ctx.cache.resolve_etag(*version.key))

    hit = cached()
    if hit is None:
        with ctx.cache.lock(
            short_id(*version.key),
            on_wait=lambda who: ctx.reporter.info(f"waiting for {who} to pull {fetcher.text}"),
        ):
            hit = cached()
            if hit is None:
                path, sha, checks = _produce(ctx, fetcher, version)
                # Recorded before the lock goes, so the pulls waiting for it find the image.
                _remember(ctx, fetcher, version, sha)
                return PullResult(fetcher.text, str(path), sha, path.stat().st_size, False, checks)
    _remember(ctx, fetcher, version, hit.sha256)
    return hit


def _produce(ctx: Context, fetcher: Fetcher, version: Version) -> tuple[Path, str, tuple[str, ...]]:
    ctx.cache.clean_dead_temps()
    try:
        with ctx.cache.temp_file(fetcher.scheme) as tmp:
            sha, checks = fetcher.produce(ctx, version, tmp)
            return ctx.cache.publish(tmp, sha), sha, checks
    except OSError as exc:
        raise raise_for_os_error(exc, f"pull of {fetcher.text} into {ctx.cache.root}") from None


def _remember(ctx: Context, fetcher: Fetcher, version: Version, sha: str) -> None:
    for key in (version.key, *version.aliases):
        ctx.cache.record_etag(sha, *key)
    ctx.cache.record_ref(
        fetcher.remote_id,
        *fetcher.slot(),
        {"ref": fetcher.text, "sha256": sha, "pulled": time.time(), **version.record},
    )


# -- settings ---------------------------------------------------------------------------------


def _setting(ctx: Context, section: str, key: str) -> str | None:
    """`[section] key = ...` from the config file; a token there needs a 0600 file."""
    table = ctx.config.settings.get(section)
    value = table.get(key) if isinstance(table, dict) else None
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{ctx.config.path}: [{section}] {key} must be a string")
    if value and key == "token":
        mode = stat.S_IMODE(os.stat(ctx.config.path).st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{ctx.config.path} holds a secret but is readable by others",
                hint=f"run: chmod 600 {ctx.config.path}",
            )
    return value or None


def _endpoint(cli: str | None, env: str, ctx: Context, section: str) -> str | None:
    return cli or os.environ.get(env) or _setting(ctx, section, "url")


def _library_client(ctx: Context, options: FetchOptions) -> Any:
    from registry_client.backends import library
    from registry_client.backends.http import env_first

    url = _endpoint(options.library_url, library.ENV_URL, ctx, "library")
    token = env_first(*library.ENV_TOKENS) or _setting(ctx, "library", "token")
    return library.LibraryClient(url, token)


# -- the fetchers -------------------------------------------------------------------------------


def open_fetcher(ctx: Context, ref: FetcherRef, options: FetchOptions) -> Fetcher:
    kinds: dict[str, Callable[[Context, str, FetchOptions], Fetcher]] = {
        "docker": DockerFetcher,
        "library": LibraryFetcher,
        "shub": ShubFetcher,
    }
    if ref.scheme not in kinds:
        raise UsageError(f"{ref.scheme}:// is not a fetcher")
    return kinds[ref.scheme](ctx, ref.body, options)


def _progress(ctx: Context, label: str, total: int) -> Any:
    return ctx.reporter.progress(label, total)


class LibraryFetcher(Fetcher):
    scheme = "library"

    def __init__(self, ctx: Context, body: str, options: FetchOptions) -> None:
        from registry_client.backends import docker, library

        self.ref = library.parse(body)
        self.arch = docker.node_platform(options.arch).architecture
        self.client = _library_client(ctx, options)
        self.text = str(self.ref)
        self.remote_id = short_id("library", self.client.base)
        self.record: Any = None

    def slot(self) -> tuple[str, str, str]:
        return (
            f"{self.ref.entity}+{self.ref.collection}",
            self.ref.container,
            f"{self.ref.tag}~{self.arch}",
        )

    def pinned(self, cache: Any) -> str | None:
        return self.ref.pinned_sha256

    def resolve(self) -> Version:
        from registry_client.retry import retry_call

        self.record = retry_call(
            f"library image {self.ref}", lambda: self.client.image(self.ref, self.arch)
        )
        return Version(
            ("library", self.client.base, self.record.sha256),
            self.record.sha256,
            {"arch": self.arch, "size": self.record.size},
        )

    def produce(self, ctx: Context, version: Version, dest: Path) -> tuple[str, tuple[str, ...]]:
        from registry_client.backends import library

        with _progress(ctx, f"pull {self.text}", self.record.size) as advance:
            return library.download(
                self.client,
                self.ref,
                self.arch,
                self.record,
                dest,
                settings=ctx.transfer,
                progress=advance,
            )

    def close(self) -> None:
        self.client.close()


class ShubFetcher(Fetcher):
    scheme = "shub"

    def __init__(self, ctx: Context, body: str, options: FetchOptions) -> None:
        from registry_client.backends import shub

        self.ref = shub.parse(body)
        self.client = shub.ShubClient(_endpoint(options.shub_url, shub.ENV_URL, ctx, "shub"))
        self.text = str(self.ref)
        self.remote_id = short_id("shub", self.client.base)
        self.manifest: Any = None

    def slot(self) -> tuple[str, str, str]:
        return self.ref.user, self.ref.repo, self.ref.tag or f"@{self.ref.version}"

    def _key(self, md5: str) -> tuple[str, ...]:
        return ("shub", self.client.base, md5)

    def pinned(self, cache: Any) -> str | None:
        version = self.ref.version
        return cache.resolve_etag(*self._key(version)) if version and len(version) == 32 else None

    def resolve(self) -> Version:
        from registry_client.retry import retry_call

        self.manifest = retry_call(
            f"shub manifest {self.ref}", lambda: self.client.manifest(self.ref)
        )
        return Version(
            self._key(self.manifest.md5),
            None,
            {"version": self.manifest.md5, "commit": self.manifest.commit},
        )

    def produce(self, ctx: Context, version: Version, dest: Path) -> tuple[str, tuple[str, ...]]:
        from registry_client.backends import shub

        with _progress(ctx, f"pull {self.text}", 0) as advance:
            return shub.download(
                self.client, self.ref, self.manifest, dest, settings=ctx.transfer, progress=advance
            )

    def close(self) -> None:
        self.client.close()


class DockerFetcher(Fetcher):
    scheme = "docker"

    def __init__(self, ctx: Context, body: str, options: FetchOptions) -> None:
        from registry_client.backends import docker

        self.ref = docker.parse(body)
        self.platform = docker.node_platform(options.arch)
        self.text = str(self.ref)
        self.remote_id = short_id("docker", self.ref.registry)
        self.client: Any = None
        self.resolved: Any = None

    def slot(self) -> tuple[str, str, str]:
        tag = self.ref.tag or f"@{self.ref.digest}"
        platform = str(self.platform).replace("/", "-")
        return self.ref.registry, self.ref.repository.replace("/", "+"), f"{tag}~{platform}"

    def _key(self, digest: str) -> tuple[str, ...]:
        from registry_client.sifbuild import BUILDER_VERSION

        return ("docker-sif", BUILDER_VERSION, self.ref.name, digest, str(self.platform))

    def pinned(self, cache: Any) -> str | None:
        return cache.resolve_etag(*self._key(self.ref.digest)) if self.ref.digest else None

    def resolve(self) -> Version:
        from registry_client.backends import docker
        from registry_client.retry import retry_call

        self.client = self.client or docker.RegistryClient(self.ref)
        self.resolved = retry_call(
            f"manifest of {self.ref}", lambda: self.client.resolve(self.platform)
        )
        r = self.resolved
        aliases = (self._key(r.index_digest),) if r.index_digest else ()
        return Version(
            self._key(r.manifest_digest),
            None,
            {
                "manifest": r.manifest_digest,
                "index": r.index_digest,
                "platform": str(self.platform),
            },
            aliases,
        )

    def produce(self, ctx: Context, version: Version, dest: Path) -> tuple[str, tuple[str, ...]]:
        from registry_client.digests import hash_file
        from registry_client.retry import retry_call
        from registry_client.sifbuild import BuildSpec, build_sif, remove_tree

        image = retry_call(
            f"config of {self.ref}", lambda: self.client.config_json(self.resolved.config)
        )
        layers = self._layers(ctx)
        work = _work_dir(ctx)
        try:
            spec = BuildSpec(
                layers, image, self.text, self.resolved.pinned_ref, self.platform.architecture
            )
            build_sif(spec, work, dest, ctx.reporter.warn)
        finally:
            remove_tree(work)
        return hash_file(str(dest)).sha256, ("manifest-digest", "blob-sha256", "diff-id")

    def _layers(self, ctx: Context) -> list[Any]:
        """Every layer blob, verified, in the shared blob cache (fetched at most once)."""
        from registry_client.backends.docker import ensure_blob
        from registry_client.sifbuild import LayerFile

        layers = self.resolved.layers
        total = sum(d.size for d in layers if ctx.cache.lookup_blob(d.hex) is None)
        with (
            _progress(ctx, f"pull {self.text}", total) as advance,
            ThreadPoolExecutor(BLOB_WORKERS, thread_name_prefix="rc-blob") as pool,
        ):
            paths = list(
                pool.map(
                    lambda d: ensure_blob(
                        self.client, d, ctx.cache, settings=ctx.transfer, progress=advance
                    ),
                    layers,
                )
            )
        return [LayerFile(p, d.digest) for p, d in zip(paths, layers, strict=True)]

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def _work_dir(ctx: Context) -> Path:
    """A private build folder beside the cache's temp files (same filesystem, not /tmp)."""
    ctx.cache.ensure()
    return Path(
        tempfile.mkdtemp(prefix=f"build.{os.getpid()}.", suffix=".dir", dir=ctx.cache.base / "tmp")
    )


# -- search and copy ---------------------------------------------------------------------------


def search(ctx: Context, query: str, options: FetchOptions | None = None) -> list[dict[str, Any]]:
    """Images in the Library matching QUERY (the Library API's /v1/search)."""
    from registry_client.backends import library
    from registry_client.retry import retry_call

    options = options or FetchOptions()
    client = _library_client(ctx, options)
    try:
        found = retry_call(f"library search {query!r}", lambda: client.search(query, options.arch))
    finally:
        client.close()
    return library.search_rows(found)


def copy(ctx: Context, src: str, dst: str, options: FetchOptions | None = None) -> dict[str, Any]:
    """Any reference → a bucket remote: pull SRC (verified) into the cache, then push it,
    unless DST already holds the same sha256."""
    from registry_client import service
    from registry_client.remotes import open_remote, remote_for

    target = parse_image_ref(dst)  # fetcher references cannot be written: exit 2
    source = parse_reference(src)
    if isinstance(source, FetcherRef):
        pulled = pull_fetcher(ctx, source, options=options)
    else:
        pulled = service.pull(ctx, source)
    backend = open_remote(remote_for(ctx.config, target))
    try:
        present = service.stat_image(backend, target).sha256
    except NotFound:
        present = None
    finally:
        backend.close()
    result = {"src": pulled.ref, "dst": str(target), "sha256": pulled.sha256, "size": pulled.size}
    if present == pulled.sha256:
        ctx.reporter.info(f"{target} already holds sha256:{pulled.sha256}; nothing to copy")
        return {**result, "copied": False}
    labels = {"source": pulled.ref} if len(pulled.ref) < 200 else {}
    pushed = service.push(ctx, pulled.path, target, labels=labels)
    return {**result, "copied": True, "key": pushed.key}
