"""`migrate SRC DST` and `copy SRC DST`: images streamed from store to store, verified.

A migration is a plan, then parallel work (see docs/migrate.md):

1. List the source (REMOTE, REMOTE:COLLECTION or a bucket URL) and keep this shard's
   images (`--shard K/N`: a hash of COLLECTION/NAME, so every tag of an image lands on
   the same machine). List the destination once, under the collection it names (or the
   source's).
2. Decide each image: absent at the destination → copy; the same bytes (equal md5
   ETags in the two listings), or the destination records this source ETag, or both
   record the same sha256 → skip; another sha256 → conflict, reported and left alone
   unless `--overwrite`. Only images present on both sides cost HEAD requests (in
   parallel); nothing is read or written with `--dry-run`.
3. Copies are grouped by content (source ETag and size): the first of a group is
   carried (copier.py: server-side within one store, else streamed through relay.py),
   the other tags are copied server-side at the destination. Groups run on `--jobs`
   workers, largest first; one image failing never stops the others.
4. Each image's row (copied / skipped / conflict / failed, with the reason) goes to
   the caller as soon as it is known; then a summary. Interrupted uploads of the
   destination are resumed or removed, so a run killed at any moment can simply run again.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

from registry_client.backends.base import Backend, ObjectInfo
from registry_client.config import RemoteConfig
from registry_client.context import Context
from registry_client.copier import (
    Copied,
    Sides,
    carry,
    copy_within,
    download_origin,
    recorded_sha256,
    source_sha256,
    stream,
)
from registry_client.errors import Interrupted, NotFound, RegistryClientError, UsageError
from registry_client.names import (
    IMAGE_SUFFIXES,
    FetcherRef,
    ImageRef,
    parse_image_ref,
    ref_from_key,
)
from registry_client.relay import Lanes, StreamReader
from registry_client.remotes import open_remote, parse_remote_target, remote_for
from registry_client.reporting import Tally
from registry_client.service import stat_image
from registry_client.settings import MIGRATE_JOBS
from registry_client.sources import Download, FetchOptions, open_source

MiB = 1024 * 1024
MD5_ETAG_RE = re.compile(r"[0-9a-f]{32}(-[0-9]+)?\Z")
DEFAULT_JOBS = MIGRATE_JOBS
SPOOL_BUDGET = 512 * MiB
# Most severe first: an integrity failure decides the exit code over everything else.
SEVERITY = (4, 5, 6, 3, 2, 1)
CONFLICT_CODE = 1

Row = dict[str, Any]
Emit = Callable[[Row], None]


class MigrationFailed(RegistryClientError):
    """Some images were not copied; the exit code is the most severe of theirs."""

    def __init__(self, message: str, exit_code: int, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Options:
    jobs: int = DEFAULT_JOBS
    dry_run: bool = False
    overwrite: bool = False
    shard: tuple[int, int] | None = None  # (K, N), 0 <= K < N
    temp_dir: str | None = None  # where parts wait (default: the system temp dir)
    budget: int = SPOOL_BUDGET  # bytes of parts waiting at once


@dataclass
class Item:
    """One image of the plan."""

    ref: ImageRef  # as named at the source (COLLECTION/NAME:TAG)
    src: ObjectInfo  # the listing's, then a fresh stat's
    dst_key: str
    dst: ObjectInfo | None = None  # the destination's, when it exists
    action: str = "copy"  # copy | skip | conflict | check (learn the sha256 by reading)
    reason: str = ""

    @property
    def group(self) -> tuple[str, ...]:
        """Items with the same source ETag and size hold the same bytes."""
        etag = (self.src.etag or "").lower()
        if MD5_ETAG_RE.match(etag):
            return (etag, str(self.src.size))
        return ("unique", self.src.key)


@dataclass
class Summary:
    counts: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    planned_bytes: int = 0
    seconds: float = 0.0
    exit_code: int = 0

    def add(self, row: Row) -> None:
        status = row["status"]
        self.counts[status] = self.counts.get(status, 0) + 1
        self.sent += int(row.get("sent") or 0)
        if row.get("action") == "copy":
            self.planned_bytes += int(row.get("size") or 0)
        code = int(row.get("exit_code") or 0)
        if code and (not self.exit_code or SEVERITY.index(code) < SEVERITY.index(self.exit_code)):
            self.exit_code = code

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.counts,
            "bytes_sent": self.sent,
            "bytes_to_copy": self.planned_bytes,
            "seconds": round(self.seconds, 2),
            "exit_code": self.exit_code,
        }

    def problem(self) -> str:
        bad = {k: n for k, n in self.counts.items() if k in ("failed", "conflict")}
        total = sum(self.counts.values())
        parts = ", ".join(f"{n} {k}" for k, n in sorted(bad.items()))
        return f"{parts or 'some images were not copied'} (of {total} images)"

    def hint(self) -> str:
        if self.counts.get("conflict") and not self.counts.get("failed"):
            return "a destination tag holds other content; --overwrite replaces it"
        return "see each image's reason above; run the same command again to retry"

    def text(self) -> str:
        parts = ", ".join(f"{n} {status}" for status, n in sorted(self.counts.items()))
        sent = f"{self.sent / 1e6:.1f} MB sent in {self.seconds:.1f}s"
        return f"{parts or 'nothing to do'}; {sent}"


def parse_shard(text: str) -> tuple[int, int]:
    """`K/N` with 0 <= K < N (a Slurm array index or a Kubernetes completion index)."""
    match = re.fullmatch(r"(\d{1,6})/(\d{1,6})", text.strip())
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise UsageError(
            f"--shard {text!r}: expected K/N with 0 <= K < N",
            hint="e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with --array=0-N",
        )
    return int(match.group(1)), int(match.group(2))


def in_shard(ref: ImageRef, shard: tuple[int, int] | None) -> bool:
    if shard is None:
        return True
    digest = hashlib.sha256(f"{ref.collection}/{ref.name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % shard[1] == shard[0]


# -- the two sides ------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    text: str  # as the user wrote it
    remote: RemoteConfig
    collection: str | None  # REMOTE:COLLECTION

    @property
    def prefix(self) -> str:
        return f"{self.collection}/" if self.collection else ""


def side(ctx: Context, text: str) -> Side:
    remote, prefix = parse_remote_target(ctx.config, text)
    return Side(text, remote, prefix.rstrip("/") or None)


def dest_key(item_ref: ImageRef, src_key: str, dst: Side) -> str:
    suffix = next((s for s in IMAGE_SUFFIXES if src_key.endswith(s)), ".sif")
    collection = dst.collection or item_ref.collection
    return f"{collection}/{item_ref.name}:{item_ref.tag}{suffix}"


# -- planning -------------------------------------------------------------------------------


def plan(
    source: Backend, target: Backend, src: Side, dst: Side, options: Options, workers: int
) -> list[Item]:
    def source_items() -> list[Item]:
        return [
            Item(ref, info, dest_key(ref, info.key, dst))
            for info in source.list(src.prefix)
            if (ref := ref_from_key(info.key)) is not None and in_shard(ref, options.shard)
        ]

    def destination() -> dict[str, ObjectInfo]:
        return {info.key: info for info in target.list(dst.prefix or src.prefix)}

    with ThreadPoolExecutor(2, "rc-list") as pool:  # the two listings at once
        listed, found = pool.submit(source_items), pool.submit(destination)
        items, present = listed.result(), found.result()
    seen: dict[str, Item] = {}
    for item in items:
        item.dst = present.get(item.dst_key)
        first = seen.setdefault(item.dst_key, item)
        if first is not item:
            item.action, item.reason = "conflict", f"{first.ref.short} goes to the same tag"
    todo = [i for i in items if i.dst is not None and i.action == "copy"]
    _parallel(lambda item: _decide(source, target, item, options.overwrite), todo, workers)
    return items


def _decide(source: Backend, target: Backend, item: Item, overwrite: bool) -> None:
    """copy, skip, conflict or check, for an image the destination already has."""
    assert item.dst is not None
    if _same_bytes(item.src, item.dst):
        item.action, item.reason = "skip", "same ETag"
        return
    item.dst = dst = target.stat(item.dst_key)
    dst_sha = recorded_sha256(dst)
    if dst_sha and dst.metadata.get("source-etag") == item.src.etag and dst.size == item.src.size:
        item.action, item.reason = "skip", "copied before from this source ETag"
        return
    item.src = src = source.stat(item.src.key)
    src_sha = recorded_sha256(src)
    if src_sha and src_sha == dst_sha:
        item.action, item.reason = "skip", "same sha256"
    elif dst_sha and not src_sha:
        item.action, item.reason = "check", "the source records no sha256: compared by reading it"
    else:
        held = f"sha256:{dst_sha}" if dst_sha else "an object with no recorded sha256"
        item.action, item.reason = "conflict", f"the destination holds {held}"
    if item.action == "conflict" and overwrite:
        item.action, item.reason = "copy", f"overwrite ({item.reason})"


def _same_bytes(a: ObjectInfo, b: ObjectInfo) -> bool:
    etag = (a.etag or "").lower()
    return bool(MD5_ETAG_RE.match(etag)) and etag == (b.etag or "").lower() and a.size == b.size


def _parallel(fn: Callable[[Item], None], items: Sequence[Item], workers: int) -> None:
    if not items:
        return
    with ThreadPoolExecutor(max(1, min(workers, len(items))), "rc-plan") as pool:
        for fut in [pool.submit(fn, item) for item in items]:
            fut.result()


# -- rows -----------------------------------------------------------------------------------


def _row(item: Item, status: str, **extra: Any) -> Row:
    row: Row = {
        "ref": item.ref.short,
        "src": item.src.key,
        "dst": item.dst_key,
        "status": status,
        "size": item.src.size,
    }
    sha = recorded_sha256(item.src)
    if sha:
        row["sha256"] = sha
    if item.reason:
        row["reason"] = item.reason
    row.update(extra)
    return row


def row_text(row: Row) -> str:
    """One image's row as a line of text (stdout without --json)."""
    if "summary" in row:
        return str(row["summary"])
    status = row.get("action", row["status"]) if row["status"] == "planned" else row["status"]
    detail = row.get("how") or row.get("reason") or ""
    size = f"{int(row.get('size') or 0) / 1e6:.1f} MB"
    return f"{status:<9} {row['ref']:<40} {size:>10}  {detail}".rstrip()


def _plan_row(item: Item) -> Row:
    action = "copy" if item.action == "check" else item.action
    row = _row(item, "planned", action=action)
    if item.action == "conflict":
        row["exit_code"] = CONFLICT_CODE
    return row


def _failed_row(item: Item, exc: BaseException) -> Row:
    if isinstance(exc, RegistryClientError):
        code, reason = exc.exit_code, exc.message
    else:
        code, reason = 1, f"unexpected {type(exc).__name__}: {exc}"
    item.reason = reason[:500]
    return _row(item, "failed", exit_code=code)


def _done_row(item: Item, done: Copied) -> Row:
    return _row(
        item,
        "copied",
        sha256=done.sha256,
        how=done.how,
        sent=done.sent,
        reused=done.reused,
        verified=list(done.checks),
    )


# -- running --------------------------------------------------------------------------------


def migrate(ctx: Context, src_text: str, dst_text: str, options: Options, emit: Emit) -> Summary:
    """Copy every image of SRC into DST; `emit` gets each image's row as soon as it is known.
    The summary's exit code is the most severe of the rows'."""
    src, dst = side(ctx, src_text), side(ctx, dst_text)

    def planner(source: Backend, target: Backend, workers: int) -> list[Item]:
        return plan(source, target, src, dst, options, workers)

    return _execute(ctx, src, dst, planner, options, emit)


def copy_image(ctx: Context, src_text: str, dst_text: str, options: Options, emit: Emit) -> Summary:
    """`copy SRC DST` of one bucket image: the same engine as a migration of one image."""
    src_ref, dst_ref = parse_image_ref(src_text), parse_image_ref(dst_text)
    src = Side(src_text, remote_for(ctx.config, src_ref), None)
    dst = Side(dst_text, remote_for(ctx.config, dst_ref), None)

    def planner(source: Backend, target: Backend, workers: int) -> list[Item]:
        info = stat_image(source, src_ref)
        if src_ref.digest and recorded_sha256(info) not in (None, src_ref.digest):
            raise NotFound(f"{src_ref.short} does not hold sha256:{src_ref.digest}")
        suffix = next((s for s in IMAGE_SUFFIXES if info.key.endswith(s)), ".sif")
        item = Item(src_ref, info, dst_ref.key(suffix))
        try:
            item.dst = target.stat(item.dst_key)
        except NotFound:
            item.dst = None
        if item.dst is not None:
            _decide(source, target, item, options.overwrite)
        return [item]

    return _execute(ctx, src, dst, planner, options, emit)


Planner = Callable[[Backend, Backend, int], list[Item]]


def _execute(
    ctx: Context, src: Side, dst: Side, planner: Planner, options: Options, emit: Emit
) -> Summary:
    started = time.monotonic()
    source, target = _open_both(src.remote, dst.remote)
    summary = Summary()
    lock = threading.Lock()

    def emit_row(row: Row) -> None:
        with lock:
            summary.add(row)
            emit(row)

    try:
        items = planner(source, target, _connections(options))
        if options.dry_run:
            for item in items:
                emit_row(_plan_row(item))
        else:
            _run(ctx, items, source, target, src, dst, options, emit_row)
    finally:
        source.close()
        target.close()
    summary.seconds = time.monotonic() - started
    return summary


def _open_both(src: RemoteConfig, dst: RemoteConfig) -> tuple[Backend, Backend]:
    """Both remotes, set up at once (client libraries, service models, authentication)."""
    with ThreadPoolExecutor(2, "rc-open") as pool:
        opening = [pool.submit(open_remote, src), pool.submit(open_remote, dst)]
        wait(opening)
    opened = [f.result() for f in opening if f.exception() is None]
    if len(opened) < 2:
        for backend in opened:
            backend.close()
        for fut in opening:
            if (error := fut.exception()) is not None:
                raise error
    return opening[0].result(), opening[1].result()


def _connections(options: Options) -> int:
    return max(8, 2 * options.jobs)


def _run(
    ctx: Context,
    items: list[Item],
    source: Backend,
    target: Backend,
    src: Side,
    dst: Side,
    options: Options,
    emit: Emit,
) -> None:
    for item in items:
        if item.action == "skip":
            emit(_row(item, "skipped"))
        elif item.action == "conflict":
            emit(_row(item, "conflict", exit_code=CONFLICT_CODE))
    _clean_pending(ctx, target, items, dst.prefix or src.prefix)
    work = [i for i in items if i.action in ("copy", "check")]
    if not work:
        return
    tally = Tally(len(work), sum(i.src.size for i in work))
    lanes = Lanes.create(
        connections=_connections(options),
        budget=options.budget,
        directory=options.temp_dir,
        # A part (64 MiB by default) comes in one ranged GET: parallel reads come from
        # the parts and the images in flight, and fewer requests cost the stores less.
        chunk_size=max(ctx.transfer.chunk_size, ctx.part_size),
        stall_timeout=ctx.transfer.stall_timeout,
    )
    sides = Sides(source, target, lanes, ctx.reporter, ctx.part_size, src.text)
    seeds = {i.group: i for i in items if i.action == "skip"}
    try:
        with ctx.reporter.batch(f"migrate {src.text} → {dst.text}", tally):
            _run_groups(_groups(work), seeds, sides, options, tally, emit)
    finally:
        lanes.close()


def _clean_pending(ctx: Context, target: Backend, items: list[Item], prefix: str) -> None:
    """Interrupted uploads of images that need no copy are removed now; those of images
    to copy are resumed (or removed) when their upload starts."""
    if not target.capabilities.resume:
        return
    try:
        pending = target.pending_uploads(prefix)
    except RegistryClientError as exc:
        ctx.reporter.warn(f"could not list interrupted uploads: {exc.message}")
        return
    for item in items:
        if item.dst_key in pending and item.action in ("skip", "conflict"):
            try:
                target.discard_pending(item.dst_key)
            except RegistryClientError as exc:
                ctx.reporter.warn(f"{item.dst_key}: interrupted uploads left: {exc.message}")


def _groups(work: list[Item]) -> list[list[Item]]:
    groups: dict[tuple[str, ...], list[Item]] = {}
    for item in work:
        groups.setdefault(item.group, []).append(item)
    return sorted(groups.values(), key=lambda g: -sum(i.src.size for i in g))


def _run_groups(
    groups: list[list[Item]],
    seeds: dict[tuple[str, ...], Item],
    sides: Sides,
    options: Options,
    tally: Tally,
    emit: Emit,
) -> None:
    def one_group(group: list[Item]) -> None:
        seed = seeds.get(group[0].group)
        done = _seed(sides, seed) if seed is not None else None
        for item in group:
            if sides.lanes.stop.is_set():
                return
            try:
                row, copied = _one(sides, item, done, tally)
                emit(row)
                done = done or copied
            except Interrupted:
                return
            except Exception as exc:  # noqa: BLE001 - one image never stops the others
                emit(_failed_row(item, exc))
            finally:
                tally.item_done()

    with ThreadPoolExecutor(max(1, options.jobs), "rc-migrate") as pool:
        futures = [pool.submit(one_group, g) for g in groups]
        try:
            _wait_all(futures)
        except BaseException:
            sides.lanes.stop.set()  # Ctrl-C: every relay stops and aborts its upload
            wait(futures)
            raise Interrupted("interrupted") from None


def _wait_all(futures: list[Future[None]]) -> None:
    pending = set(futures)
    while pending:
        _, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
    for fut in futures:
        fut.result()


def _seed(sides: Sides, seed: Item) -> Copied | None:
    """A destination object that already holds a group's content, to copy tags from."""
    try:
        info = sides.target.stat(seed.dst_key)
    except RegistryClientError:
        return None
    sha = recorded_sha256(info)
    return Copied(info, sha, "present", 0, 0, ()) if sha else None


def _one(sides: Sides, item: Item, done: Copied | None, tally: Tally) -> tuple[Row, Copied | None]:
    info = sides.source.stat(item.src.key)  # fresh: its metadata, and the ETag reads pin to
    item.src = info
    if item.action == "check":
        return _check(sides, item, tally), None
    sha = recorded_sha256(info)
    copied = None
    if done is not None and (sha is None or sha == done.sha256):
        copied = copy_within(sides, done, info, item.dst_key)
        if copied is not None:
            copied = replace(copied, how="copied at the destination")
            tally.advance(info.size)
    if copied is None:
        copied = carry(sides, info, item.dst_key, tally.advance)
    return _done_row(item, copied), copied


def _check(sides: Sides, item: Item, tally: Tally) -> Row:
    """The source records no sha256 but the destination does: read the source to compare."""
    assert item.dst is not None
    held = recorded_sha256(item.dst)
    sha = source_sha256(sides, item.src)
    tally.advance(item.src.size)
    if sha == held:
        item.reason = "same sha256 (read from the source)"
        return _row(item, "skipped", sha256=sha)
    item.reason = f"the destination holds sha256:{held}"
    return _row(item, "conflict", sha256=sha, exit_code=CONFLICT_CODE)


# -- search across remotes ---------------------------------------------------------------------


def _images(backend: Backend, prefix: str) -> Iterator[tuple[ObjectInfo, ImageRef]]:
    for info in backend.list(prefix):
        ref = ref_from_key(info.key)
        if ref is not None:
            yield info, ref


def _stat_or_listed(backend: Backend, info: ObjectInfo) -> ObjectInfo:
    try:
        return backend.stat(info.key)
    except RegistryClientError:
        return info  # gone since the listing, or unreadable: what the listing said


def search_remotes(ctx: Context, query: str) -> list[dict[str, Any]]:
    """Images whose COLLECTION/NAME:TAG contains QUERY, in every configured remote."""
    rows: list[dict[str, Any]] = []
    remotes = dict(ctx.config.remotes)
    remotes.setdefault(ctx.config.default_remote, ctx.config.remote(None))
    for name, remote in sorted(remotes.items()):
        try:
            backend = open_remote(remote)
            try:
                found = [(i, r) for i, r in _images(backend, "") if query.lower() in r.short]
                # Only the matches are stat'ed: their metadata has arch and the digest.
                stat = functools.partial(_stat_or_listed, backend)
                infos = backend.limiter.map(stat, [info for info, _ in found])
                rows += [
                    {
                        "ref": f"{name}:{ref.short}",
                        "size": info.size,
                        "remote": name,
                        "arch": info.metadata.get("arch"),
                        "digest": f"sha256:{info.sha256}" if info.sha256 else None,
                    }
                    for info, (_, ref) in zip(infos, found, strict=True)
                ]
            finally:
                backend.close()
        except RegistryClientError as exc:
            ctx.reporter.warn(f"search: remote {name} skipped: {exc.message}")
    return rows


# -- copy from a fetcher ------------------------------------------------------------------------


def copy_fetched(
    ctx: Context,
    ref: FetcherRef,
    dst_text: str,
    options: Options,
    fetch_options: FetchOptions,
    emit: Emit,
) -> Summary:
    """docker://, library://, shub:// → a bucket. An image that is one download with a
    digest to check (library://, shub://) is streamed straight to the bucket; a docker
    image is built into the verified node cache, then pushed. A tag already holding that
    sha256 is skipped; one holding another is a conflict unless --overwrite."""
    started = time.monotonic()
    target_ref = parse_image_ref(dst_text)
    summary = Summary()
    row: Row = {"ref": str(ref), "src": str(ref), "dst": target_ref.key()}
    if options.dry_run:
        row.update(status="planned", action="copy", reason="its content is known once fetched")
    else:
        try:
            _copy_fetched(ctx, ref, target_ref, options, fetch_options, row)
        except RegistryClientError as exc:
            row.update(status="failed", reason=exc.message[:500], exit_code=exc.exit_code)
    summary.add(row)
    emit(row)
    summary.seconds = time.monotonic() - started
    return summary


def _copy_fetched(
    ctx: Context,
    ref: FetcherRef,
    target_ref: ImageRef,
    options: Options,
    fetch_options: FetchOptions,
    row: Row,
) -> None:
    held = _held_sha256(ctx, target_ref)
    source = open_source(ctx, ref, fetch_options)
    try:
        source.resolve()
        download = source.download()
        if download is not None and (held is None or download.sha256):
            _stream_download(ctx, download, held, target_ref, options, row, str(ref))
        else:
            _fetch_then_push(ctx, ref, held, target_ref, options, fetch_options, row)
    finally:
        source.close()


def _decided(row: Row, sha: str | None, held: str | None, overwrite: bool) -> bool:
    """Fill in a skip or a conflict for a destination tag that already holds something."""
    if held is not None and held == sha:
        row.update(status="skipped", reason="same sha256")
        return True
    if held is not None and not overwrite:
        row.update(
            status="conflict",
            reason=f"the destination holds sha256:{held}",
            exit_code=CONFLICT_CODE,
        )
        return True
    return False


def _stream_download(
    ctx: Context,
    download: Download,
    held: str | None,
    target_ref: ImageRef,
    options: Options,
    row: Row,
    origin: str,
) -> None:
    row.update(size=download.size, sha256=download.sha256)
    if _decided(row, download.sha256, held, options.overwrite):
        return
    target = open_remote(remote_for(ctx.config, target_ref))
    opened: list[StreamReader] = []
    lanes = Lanes.create(
        connections=4, budget=options.budget, directory=options.temp_dir, chunk_size=ctx.part_size
    )
    try:
        found = download_origin(download, opened)
        sides = Sides(opened[0], target, lanes, ctx.reporter, ctx.part_size, origin)
        tally = Tally(1, found.info.size)
        with ctx.reporter.batch(f"copy {origin}", tally):
            done = stream(sides, found, download.sha256, target_ref.key(), tally.advance)
        row.update(
            size=found.info.size,
            sha256=done.sha256,
            status="copied",
            how="streamed from the registry's download",
            sent=done.sent,
            verified=list(done.checks),
        )
    finally:
        lanes.close()
        for reader in opened:
            reader.close()
        target.close()


def _fetch_then_push(
    ctx: Context,
    ref: FetcherRef,
    held: str | None,
    target_ref: ImageRef,
    options: Options,
    fetch_options: FetchOptions,
    row: Row,
) -> None:
    from registry_client.fetch import pull_fetcher
    from registry_client.service import push

    pulled = pull_fetcher(ctx, ref, options=fetch_options)
    row.update(size=pulled.size, sha256=pulled.sha256)
    if _decided(row, pulled.sha256, held, options.overwrite):
        return
    labels = {"migrated-from": pulled.ref} if len(pulled.ref) <= 100 else {}
    pushed = push(ctx, pulled.path, target_ref, labels=labels)
    row.update(status="copied", how="fetched into the cache, then pushed", sent=pushed.size)


def _held_sha256(ctx: Context, ref: ImageRef) -> str | None:
    backend = open_remote(remote_for(ctx.config, ref))
    try:
        info = stat_image(backend, ref)
    except NotFound:
        return None
    finally:
        backend.close()
    return recorded_sha256(info) or "unknown"
