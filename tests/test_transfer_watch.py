"""The transfer engine's watch over its reads, with a reader that blocks like a socket.

A fake reader stands in for the network here (the real servers behind the fault proxy
are in test_stall.py): its body read blocks until the watch shuts it, as a socket read
does until the connection is shut down.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry_client.backends.base import ObjectInfo, Reader, ReadWatch
from registry_client.errors import IntegrityError, Interrupted, RemoteUnavailable, Stalled
from registry_client.retry import RetryingReader, RetryPolicy
from registry_client.settings import TransferSettings
from registry_client.transfer import Scope, download

KiB = 1024


class BlockingReader(Reader):
    """Sends `trickle` bytes of a range, then blocks until its read is shut down;
    ranges starting at `fail_at` fail at once instead."""

    kind = "fake"

    def __init__(self, trickle: int = 1, fail_at: int | None = None) -> None:
        self.trickle = trickle
        self.fail_at = fail_at
        self.attempts = 0
        self.lock = threading.Lock()

    def stat(self, key: str) -> ObjectInfo:
        raise NotImplementedError

    def read_range(
        self,
        key: str,
        start: int,
        end: int,
        etag: str | None,
        *,
        watch: ReadWatch | None = None,
    ) -> Iterator[bytes]:
        with self.lock:
            self.attempts += 1
        if start == self.fail_at:
            raise IntegrityError("this range is damaged")
        shut = threading.Event()
        assert watch is not None
        with watch.attach(shut.set):
            yield b"x" * min(self.trickle, end - start)
            if not shut.wait(30):  # a socket nobody shuts: the test would time out
                raise AssertionError("the read was never stopped")
        raise RemoteUnavailable(f"read {key}: connection shut down")


def _download(reader: Reader, tmp_path: Path, **settings: float) -> None:
    info = ObjectInfo("lab/app:1.sif", 64 * KiB)
    download(
        RetryingReader(reader, RetryPolicy(attempts=3, base_delay=0.01)),
        info,
        tmp_path / "tmp",
        [],
        settings=TransferSettings(chunk_size=16 * KiB, concurrency=2, **settings),  # type: ignore[arg-type]
    )


def test_a_read_that_stops_delivering_is_stopped_retried_then_stalled(tmp_path: Path) -> None:
    reader = BlockingReader(trickle=1)
    start = time.monotonic()
    with pytest.raises(Stalled) as caught:
        _download(reader, tmp_path, stall_timeout=0.3)
    took = time.monotonic() - start
    # Each attempt delivered a byte, yet the budget was not renewed: 3 attempts, then out.
    assert "no data for 0.3 s" in caught.value.message
    assert "gave up after 3 attempts" in caught.value.message
    assert 0.8 < took < 5 and reader.attempts <= 2 * 3


def test_a_failure_elsewhere_stops_blocked_reads_at_once(tmp_path: Path) -> None:
    reader = BlockingReader(trickle=1, fail_at=16 * KiB)  # runs beside the first
    start = time.monotonic()
    with pytest.raises(IntegrityError, match="damaged"):
        _download(reader, tmp_path, stall_timeout=600)
    assert time.monotonic() - start < 2


def test_a_watch_stopped_before_the_body_stops_it_when_it_attaches() -> None:
    watch = ReadWatch()
    watch.stop(Stalled("late"))
    shut = threading.Event()
    with watch.attach(shut.set):
        assert shut.is_set()
    assert watch.check(RemoteUnavailable("broken")).message == "late"
    watch.restart()
    assert watch.check(RemoteUnavailable("broken")).message == "broken"


def test_an_old_attempt_ending_late_does_not_detach_the_current_one() -> None:
    """A broken body may be dropped without being closed: its attach context then ends
    when the garbage collector gets to it, after the retry attached its own body."""
    watch = ReadWatch()
    first, second = threading.Event(), threading.Event()
    old = watch.attach(first.set)
    old.__enter__()
    with watch.attach(second.set):
        old.__exit__(None, None, None)  # the first attempt's context ends late
        watch.cancel()
        assert second.is_set()  # the current body was still shut


def test_downloads_in_worker_threads_end_when_their_scope_is_cancelled(tmp_path: Path) -> None:
    """Ctrl-C reaches only the main thread: the downloads it started in workers (docker's
    layer blobs) end at once when it cancels their scope, not when their bodies do."""
    reader = BlockingReader(trickle=1)
    scope = Scope()
    errors: list[BaseException] = []

    def blob(n: int) -> None:
        try:
            scope.run(_download, reader, tmp_path / str(n), stall_timeout=600)
        except BaseException as exc:  # noqa: BLE001 - what the worker ended with
            errors.append(exc)

    (tmp_path / "0").mkdir()
    (tmp_path / "1").mkdir()
    workers = [threading.Thread(target=blob, args=(n,)) for n in range(2)]
    for worker in workers:
        worker.start()
    time.sleep(0.3)  # both downloads are blocked in their reads
    assert all(worker.is_alive() for worker in workers)
    start = time.monotonic()
    scope.cancel()
    for worker in workers:
        worker.join(10)
    assert time.monotonic() - start < 2
    assert len(errors) == 2 and all(isinstance(e, Interrupted) for e in errors), errors
    with pytest.raises(Interrupted):  # and nothing starts in it any more
        scope.run(_download, reader, tmp_path / "0", stall_timeout=600)


def test_an_http_read_waiting_for_its_answer_is_stopped_by_its_watch() -> None:
    """A server that has the request and says nothing yet (not even a head) is as silent
    as a stopped body: the watch shuts the connection, it does not wait for the timeout."""
    from registry_client.sources.http import HttpSource
    from tests.support.fixtures_http import FixtureServer, Response

    release = threading.Event()

    def holds(_req: object) -> Response:
        release.wait(60)
        return Response(200, b"x" * 100)

    server = FixtureServer(holds)
    try:
        source = HttpSource(f"{server.url}/image")
        for end in ("stop", "cancel"):
            watch = ReadWatch()
            if end == "stop":
                threading.Timer(0.3, watch.stop, [Stalled("no data for 0.3 s")]).start()
            else:
                threading.Timer(0.3, watch.cancel).start()
            start = time.monotonic()
            with pytest.raises(RemoteUnavailable):
                b"".join(source.read_range("image", 0, 100, None, watch=watch))
            assert time.monotonic() - start < 5, end
        source.close()
    finally:
        release.set()
        server.stop()
