"""docker:// — OCI/Docker registries (registry.py), images built into SIFs (sifbuild.py).

The source resolves a reference to one manifest (picking this node's platform from an
index), fetches every layer blob verified into the cache's shared blob store, and
builds a SIF from them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry_client.cache import short_id
from registry_client.sources import FetchOptions, Source, Version
from registry_client.sources.docker.registry import (
    RegistryClient,
    ensure_blob,
    node_platform,
    parse,
)
from registry_client.sources.docker.sifbuild import BUILDER_VERSION, squashfs_id
from registry_client.transfer import Scope

if TYPE_CHECKING:
    from registry_client.acquire import Producer
    from registry_client.context import Context

BLOB_WORKERS = 3  # layers fetched at once; their ranged reads share the registry's limiter


class DockerSource(Source):
    scheme = "docker"

    def __init__(self, ctx: Context, body: str, options: FetchOptions) -> None:
        self.ref = parse(body)
        self.platform = node_platform(options.arch)
        self.text = str(self.ref)
        self.remote_id = short_id("docker", self.ref.registry)
        self.client: Any = None
        self.resolved: Any = None

    def slot(self) -> tuple[str, str, str]:
        tag = self.ref.tag or f"@{self.ref.digest}"
        platform = str(self.platform).replace("/", "-")
        return self.ref.registry, self.ref.repository.replace("/", "+"), f"{tag}~{platform}"

    def _key(self, manifest_digest: str) -> tuple[str, ...]:
        """A build is named by its image manifest (and the builder: ours and squashfs-tools'
        versions): whatever the reference or --arch that led to it, one manifest is built
        once and gives one SIF."""
        return ("docker-sif", BUILDER_VERSION, squashfs_id(), self.ref.name, manifest_digest)

    def _index_key(self, index_digest: str) -> tuple[str, ...]:
        builder = (BUILDER_VERSION, squashfs_id())
        return ("docker-sif", *builder, self.ref.name, index_digest, str(self.platform))

    def pinned(self, cache: Any) -> str | None:
        digest = self.ref.digest
        if not digest:
            return None
        found: str | None = cache.resolve_etag(*self._key(digest))
        return found or cache.resolve_etag(*self._index_key(digest))

    def resolve(self) -> Version:
        from registry_client.retry import retry_call

        self.client = self.client or RegistryClient(self.ref)
        self.resolved = retry_call(
            f"manifest of {self.ref}", lambda: self.client.resolve(self.platform)
        )
        r = self.resolved
        aliases = (self._index_key(r.index_digest),) if r.index_digest else ()
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

    def producer(self, ctx: Context, version: Version) -> Producer:
        from registry_client.acquire import Build

        return Build(lambda dest: self._build(ctx, dest))

    def _build(self, ctx: Context, dest: Path) -> tuple[str, ...]:
        """The SIF of the resolved manifest, from its verified config and layers."""
        from registry_client.sources.docker.sifbuild import BuildSpec, build_sif, remove_tree

        # One retry loop: config_json reads through the retry wrapper itself.
        image = self.client.config_json(self.resolved.config)
        self._check_platform(ctx, image)
        layers = self._layers(ctx)
        work = _work_dir(ctx)
        try:
            spec = BuildSpec(
                layers, image, self.text, self.resolved.pinned_ref, self.platform.architecture
            )
            build_sif(spec, work, dest, ctx.reporter.warn)
        finally:
            remove_tree(work)
        return ("manifest-digest", "blob-sha256", "diff-id")

    def _check_platform(self, ctx: Context, image: dict[str, Any]) -> None:
        """A manifest named by digest is built whatever its platform; say so when it is
        not the one asked for (this node's, or --arch), as it may not run here."""
        arch, os_name = str(image.get("architecture") or ""), str(image.get("os") or "linux")
        if arch and (arch != self.platform.architecture or os_name != self.platform.os):
            ctx.reporter.warn(
                f"{self.text} is a {os_name[:20]}/{arch[:20]} image, not {self.platform}: "
                "it may not run on this node (give --arch to choose another platform)"
            )

    def _layers(self, ctx: Context) -> list[Any]:
        """Every layer blob, verified, in the shared blob cache (fetched at most once)."""
        from registry_client.sources.docker.sifbuild import LayerFile

        layers = self.resolved.layers
        total = sum(d.size for d in layers if ctx.cache.lookup_blob(d.hex, d.size) is None)
        with (
            ctx.reporter.progress(f"pull {self.text}", total) as advance,
            ThreadPoolExecutor(
                self.client.limiter.width(BLOB_WORKERS, len(layers)), thread_name_prefix="rc-blob"
            ) as pool,
        ):
            scope = Scope()
            try:
                paths = list(
                    pool.map(
                        lambda d: scope.run(ensure_blob, ctx, self.client, d, progress=advance),
                        layers,
                    )
                )
            except BaseException:  # Ctrl-C (here only), or a layer that failed
                scope.cancel()  # the other layers end now, not when their bodies do
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return [LayerFile(p, d.digest) for p, d in zip(paths, layers, strict=True)]

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def _work_dir(ctx: Context) -> Path:
    """A private build folder beside the cache's temp files (same filesystem, not /tmp)."""
    return ctx.cache.work_dir("build")
