"""The Python API: the CLI's commands as calls, with the same verification, locks and errors.

    import registry_client as rc

    path = rc.pull("lab/app:1.2").path            # the verified, read-only cached image
    rc.push("app.sif", "lab/app:1.3", labels={"team": "bio"})

    client = rc.Client(config="site.toml", cache_dir="/scratch/rc")
    for image in client.ls("lab"):
        print(image["ref"], image["digest"])

A `Client` holds one context (config + node cache + reporter + transfer settings), built by
the same composition root the CLI uses (registry_client.context.open_context); the
module-level functions use a client built from the environment, as the CLI does with no
options. Failures raise the exception tree of registry_client.errors; each exception's
`exit_code` is the CLI's exit code for it. Nothing is printed: pass a Reporter to see
progress and warnings.
"""

from __future__ import annotations

from typing import Any

from registry_client.context import Context, open_context
from registry_client.hits import PullResult
from registry_client.reporting import Reporter
from registry_client.service import PushResult
from registry_client.sources import FetchOptions

__all__ = [
    "Client",
    "PullResult",
    "PushResult",
    "copy",
    "inspect",
    "ls",
    "migrate",
    "pull",
    "push",
]


class Client:
    """Pull, push, list and inspect images with one config and one node cache."""

    def __init__(
        self,
        *,
        config: str | None = None,
        cache_dir: str | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        self.context: Context = open_context(config, cache_dir, reporter)

    def pull(
        self,
        ref: str,
        *,
        output: str | None = None,
        force: bool = False,
        offline: bool = False,
        arch: str | None = None,
        library_url: str | None = None,
        shub_url: str | None = None,
    ) -> PullResult:
        """Any reference (bucket image, URL, docker://, library://, shub://) into the node
        cache: downloaded once, verified, published atomically."""
        from registry_client.fetch import pull_any
        from registry_client.names import parse_reference

        options = FetchOptions(arch, library_url, shub_url)
        return pull_any(
            self.context,
            parse_reference(ref),
            output=output,
            force=force,
            offline=offline,
            options=options,
        )

    def push(
        self,
        file: str,
        ref: str,
        *,
        labels: dict[str, str] | None = None,
        strict: bool = False,
    ) -> PushResult:
        """Upload a SIF file (multipart/SLO, parallel) with its sha256 and labels."""
        from registry_client.names import parse_image_ref
        from registry_client.service import push

        return push(self.context, file, parse_image_ref(ref), labels=labels, strict=strict)

    def ls(self, target: str | None = None) -> list[dict[str, Any]]:
        """Images of a remote (REMOTE, REMOTE:COLLECTION or bucket URL; default remote if None)."""
        from registry_client.service import list_remote

        return list_remote(self.context.config, target)

    def inspect(self, target: str) -> dict[str, Any]:
        """SIF header, descriptors and labels of a local file or a remote image."""
        from registry_client.describe import describe

        return describe(self.context, target)

    def cache_entries(self) -> list[dict[str, Any]]:
        """Images in the node cache: digest, size, path and the tags that resolved to them."""
        from registry_client.maintenance import cache_listing

        return cache_listing(self.context.cache)

    def verify_cache(self) -> dict[str, Any]:
        """Re-hash every cached image and layer blob; damaged ones are quarantined."""
        from registry_client.maintenance import verify_cache

        return verify_cache(self.context.cache).to_dict()

    def prune_cache(
        self, *, max_age: float | None = None, max_size: int | None = None
    ) -> dict[str, Any]:
        """Remove images unused for `max_age` seconds, then the least recently used down to
        `max_size` bytes; never one a running pull holds."""
        from registry_client.maintenance import prune_cache

        return prune_cache(self.context.cache, max_age=max_age, max_size=max_size).to_dict()

    def migrate(self, src: str, dst: str, **options: Any) -> list[dict[str, Any]]:
        """Every image of SRC to DST, streamed and verified; one record per image, in the
        order they finish (`status`: copied, skipped, conflict, failed; see docs/migrate.md).
        Options as the CLI's: jobs, dry_run, overwrite, shard=(K, N), temp_dir."""
        from registry_client.migrate import Options, migrate

        rows: list[dict[str, Any]] = []
        migrate(self.context, src, dst, Options(**options), rows.append)
        return rows

    def copy(
        self,
        src: str,
        dst: str,
        *,
        overwrite: bool = False,
        arch: str | None = None,
        library_url: str | None = None,
        shub_url: str | None = None,
    ) -> dict[str, Any]:
        """Any reference → a bucket remote, verified; nothing is written if DST holds it.
        The record of that one image (as a migration's)."""
        from registry_client.migrate import Options, copy_fetched, copy_image
        from registry_client.names import FetcherRef, parse_reference

        rows: list[dict[str, Any]] = []
        options = Options(jobs=1, overwrite=overwrite)
        parsed = parse_reference(src)
        if isinstance(parsed, FetcherRef):
            fetch = FetchOptions(arch, library_url, shub_url)
            copy_fetched(self.context, parsed, dst, options, fetch, rows.append)
        else:
            copy_image(self.context, src, dst, options, rows.append)
        return rows[0]


def pull(ref: str, **options: Any) -> PullResult:
    """`Client().pull(ref, ...)`."""
    return Client().pull(ref, **options)


def push(file: str, ref: str, **options: Any) -> PushResult:
    """`Client().push(file, ref, ...)`."""
    return Client().push(file, ref, **options)


def ls(target: str | None = None) -> list[dict[str, Any]]:
    """`Client().ls(target)`."""
    return Client().ls(target)


def inspect(target: str) -> dict[str, Any]:
    """`Client().inspect(target)`."""
    return Client().inspect(target)


def copy(src: str, dst: str, **options: Any) -> dict[str, Any]:
    """`Client().copy(src, dst, ...)`."""
    return Client().copy(src, dst, **options)


def migrate(src: str, dst: str, **options: Any) -> list[dict[str, Any]]:
    """`Client().migrate(src, dst, ...)`."""
    return Client().migrate(src, dst, **options)
