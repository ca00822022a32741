"""One acquire pipeline for everything the node cache receives.

    cache hit? → lock → hit? → resume or produce into a cache temp file → verify → publish
    → record (object version → sha256)

Bucket objects (service.pull), Library and Hub images and docker SIFs (fetch), docker layer
blobs (sources.docker) and files delivered by other tools (`cache import`) all come in
here, so the rules hold for every source alike, and this is the only module that publishes
into the cache. A caller names what it wants (`Wanted`: the version that identifies the
content upstream, and the sha256 and size when known before any byte moves) and how to
make it on a miss (a `Producer`, created only then, under the lock):

* `Download` — ranged reads of a Reader (a bucket, an HTTP source) through the transfer
  engine. Under the version's lock it writes to the version's resume file and records each
  finished range, so a pull killed, interrupted or cut off by the network is continued by
  the next one: only the missing ranges are fetched, the whole file is hashed again.
* `Build` — a file made here from inputs that were themselves acquired (a SIF from docker
  layers): it starts again, its inputs do not.
* `CopyIn` — a local file copied in, hashed as it is copied.

Every producer's bytes are checked by registry_client.verify, the one verification.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry_client import policy
from registry_client.cache import raise_for_os_error, short_id
from registry_client.errors import (
    IntegrityError,
    Interrupted,
    RegistryClientError,
    RemoteUnavailable,
)
from registry_client.hits import cache_hit
from registry_client.verify import Expect, verify

if TYPE_CHECKING:
    from registry_client.backends.base import ObjectInfo, Progress, Reader
    from registry_client.context import Context
    from registry_client.digests import DigestResult, EtagPlan

MiB = 1024 * 1024
IMAGE, BLOB = "sif", "blobs"
_REREAD = {
    "refresh": "with the site cache's copy refreshed",
    "direct": "from the store, past the site cache",
}


@dataclass(frozen=True)
class Wanted:
    """What a pull wants, as far as it is known before any byte moves."""

    label: str  # the reference, in messages
    version: tuple[str, ...]  # names the content upstream: its lock, its version → sha256
    aliases: tuple[tuple[str, ...], ...] = ()  # other versions naming the same content
    sha256: str | None = None  # when the origin says it beforehand (a hit needs no bytes)
    size: int | None = None
    kind: str = IMAGE  # IMAGE (sif/) or BLOB (a docker layer, blobs/)


@dataclass(frozen=True)
class Acquired:
    path: Path
    sha256: str
    size: int
    checks: tuple[str, ...]
    resumed: int = 0  # bytes an interrupted download had fetched before
    cached: bool = False


@dataclass
class Job:
    """A producer's work: its temp file and, for a resumed download, what it holds."""

    ctx: Context
    label: str
    tmp: Path
    have: list[tuple[int, int]] = field(default_factory=list)
    on_range: Callable[[int, int], None] | None = None

    @property
    def resumed(self) -> int:
        return sum(end - start for start, end in self.have)


class Producer(abc.ABC):
    """Makes the bytes of a miss in a temp file of the cache, verified."""

    resumable = False  # its temp file may be continued by the next pull of the version

    @abc.abstractmethod
    def make(self, job: Job) -> tuple[DigestResult, tuple[str, ...]]:
        """Write job.tmp; (its digests, the checks it passed). IntegrityError on a mismatch."""

    def reroute(self) -> str | None:
        """After a failed check: another way to read the bytes (a site cache bypassed), or
        None."""
        return None


def acquire(
    ctx: Context, wanted: Wanted, producer: Callable[[], Producer], *, force: bool = False
) -> Acquired:
    """The cached file of `wanted`, made by `producer()` on a miss (or with `force`)."""
    hit = None if force else _hit(ctx, wanted)
    if hit is not None:
        return hit
    lock_id = short_id(*wanted.version)

    def waiting(who: str) -> None:
        ctx.reporter.info(f"waiting for {who} to pull {wanted.label}")

    with ctx.cache.lock(lock_id, on_wait=waiting) as locked:
        hit = None if force else _hit(ctx, wanted)
        if hit is not None:
            return hit
        ctx.cache.clean_dead_temps()
        made = _produce(ctx, wanted, producer(), lock_id if locked else None, force)
        # Before the lock goes: a waiter without a sha256 to look for finds it by version.
        # (A layer blob is named by its digest: nothing to record.)
        for version in (wanted.version, *wanted.aliases) if wanted.kind == IMAGE else ():
            ctx.cache.record_etag(made.sha256, *version)
    if wanted.kind == IMAGE:
        policy.after_publish(ctx, made.sha256)
    return made


def _hit(ctx: Context, wanted: Wanted) -> Acquired | None:
    sha = wanted.sha256 or ctx.cache.resolve_etag(*wanted.version)
    if wanted.kind == BLOB:
        path = ctx.cache.lookup_blob(sha, wanted.size, verify=True) if sha else None
        if path is None or sha is None:
            return None
        return Acquired(path, sha, path.stat().st_size, ("cache",), cached=True)
    found = cache_hit(ctx.cache, wanted.label, sha, wanted.size)
    if found is None:
        return None
    return Acquired(Path(found.path), found.sha256, found.size, found.verified, cached=True)


def _produce(
    ctx: Context, wanted: Wanted, producer: Producer, version_id: str | None, replace: bool
) -> Acquired:
    resume = version_id if producer.resumable else None
    while True:
        try:
            with _job(ctx, wanted.label, resume) as job:
                result, checks = producer.make(job)
                if wanted.kind == BLOB:
                    # Over a damaged copy of ours, if one is still there (one we may not move).
                    path = ctx.cache.publish_blob(job.tmp, result.sha256, replace=True)
                else:
                    path = ctx.cache.publish(job.tmp, result.sha256, replace=replace)
                return Acquired(path, result.sha256, result.size, checks, job.resumed)
        except IntegrityError as exc:
            route = producer.reroute()
            if route is None:
                raise
            ctx.reporter.warn(f"{wanted.label}: {exc.message}; reading it again {_REREAD[route]}")
        except OSError as exc:
            raise raise_for_os_error(exc, f"pull of {wanted.label} into {ctx.cache.root}") from None


@contextlib.contextmanager
def _job(ctx: Context, label: str, version_id: str | None) -> Iterator[Job]:
    """A Job in a fresh temp file, or in the version's resume file (with what it holds and
    a callback recording each finished range) when the version is locked by us."""
    paths = ctx.cache.resume_paths(version_id) if version_id else None
    if paths is None:  # no lock (or another user's files hold the names): no resume
        with ctx.cache.temp_file() as tmp:
            yield Job(ctx, label, tmp)
        return
    tmp, state_path = paths  # both exist and are ours: nobody can swap them
    chunk = ctx.transfer.chunk_size
    have = _resumable_ranges(ctx.cache.read_state(state_path), chunk)
    if not have:
        ctx.cache.empty_temp(tmp)
    done = list(have)

    def on_range(start: int, end: int) -> None:
        done.append((start, end))
        ctx.cache.write_state(state_path, {"chunk": chunk, "done": done})

    try:
        yield Job(ctx, label, tmp, have, on_range)
    except BaseException as exc:
        # Keep the bytes only for a retry of the same version: after a network failure
        # or an interrupt. Not after a changed object, a failed check or a full disk.
        resumable = isinstance(exc, (KeyboardInterrupt, Interrupted)) or (
            isinstance(exc, RemoteUnavailable) and exc.retryable
        )
        if not resumable:
            ctx.cache.remove_temp(tmp)
        raise
    finally:
        if not ctx.cache.has_temp(tmp):
            ctx.cache.remove_temp(state_path)


def _resumable_ranges(state: dict[str, Any], chunk: int) -> list[tuple[int, int]]:
    """The ranges a state file says are on disk, if it was written for this chunk size."""
    done = state.get("done")
    if state.get("chunk") != chunk or not isinstance(done, list):
        return []
    try:
        return [(int(a), int(b)) for a, b in done]
    except (TypeError, ValueError):
        return []


# -- producers -------------------------------------------------------------------------------


class Download(Producer):
    """Ranged reads of `reader` (under its retry wrapper) through the transfer engine,
    checked against `expect`; `ranges=False` for a server that ignores Range (one stream,
    not resumable). `after` adds checks of the received file (e.g. a SIF header's UUID)."""

    def __init__(
        self,
        reader: Reader,
        info: ObjectInfo,
        expect: Expect,
        *,
        ranges: bool = True,
        progress: Progress | None = None,
        after: Callable[[Path], tuple[str, ...]] | None = None,
    ) -> None:
        if info.size < 0:
            raise RegistryClientError(f"{info.key}: the server did not say how large it is")
        self.reader, self.info, self.expect = reader, info, expect
        self.ranges, self.progress, self.after = ranges, progress, after
        self.resumable = ranges

    def make(self, job: Job) -> tuple[DigestResult, tuple[str, ...]]:
        from registry_client.transfer import download

        settings = job.ctx.transfer
        if not self.ranges:  # one stream: no range requests the server would ignore
            settings = replace(settings, chunk_size=max(self.info.size, 1), concurrency=1)
        resumed = job.resumed
        if resumed:
            job.ctx.reporter.info(
                f"resuming {job.label} at {resumed / MiB:.0f} MB of {self.info.size / MiB:.0f} MB"
            )
        plan: EtagPlan | None = self.expect.plan
        with contextlib.ExitStack() as stack:
            progress = self.progress or stack.enter_context(
                job.ctx.reporter.progress(f"pull {job.label}", self.info.size - resumed)
            )
            result = download(
                self.reader,
                self.info,
                job.tmp,
                plan.schemes if plan is not None else [],
                settings=settings,
                progress=progress,
                have=job.have,
                on_range=job.on_range,
                algorithm=plan.algorithm if plan is not None else "md5",
            )
        checks = verify(self.expect, result, job.ctx.reporter, job.tmp)
        if self.after is not None:
            checks = (*checks, *self.after(job.tmp))
        return result, checks

    def reroute(self) -> str | None:
        return self.reader.bypass_caches()


class Build(Producer):
    """A file made here (`build(path)` writes it and returns the checks its inputs passed);
    its sha256 is taken from the file it made."""

    def __init__(self, build: Callable[[Path], tuple[str, ...]]) -> None:
        self.build = build

    def make(self, job: Job) -> tuple[DigestResult, tuple[str, ...]]:
        from registry_client.digests import hash_file

        checks = self.build(job.tmp)
        return hash_file(str(job.tmp)), checks


class CopyIn(Producer):
    """A local file delivered by another tool, copied in and hashed as it is copied (the
    file may change meanwhile: only the bytes written count), checked against `expect`;
    `strong` refuses a copy that only its size vouches for."""

    def __init__(self, path: str, expect: Expect, *, strong: bool = True) -> None:
        self.path, self.expect, self.strong = path, expect, strong

    def make(self, job: Job) -> tuple[DigestResult, tuple[str, ...]]:
        from registry_client.digests import copy_hashing

        plan = self.expect.plan
        schemes = plan.schemes if plan is not None else []
        algorithm = plan.algorithm if plan is not None else "md5"
        result = copy_hashing(self.path, job.tmp, schemes, algorithm)
        checks = verify(self.expect, result, job.ctx.reporter, job.tmp)
        if self.strong and not {"etag", "sha256"} & set(checks):
            from registry_client.errors import UnverifiableError

            raise UnverifiableError(
                f"{self.expect.key} has neither a checkable ETag nor a sha256: {self.path} "
                "cannot be verified against it; nothing was published",
                hint=f"pull {job.label} instead",
            )
        return result, checks
