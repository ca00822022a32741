"""One limiter per remote: requests in flight never exceed its slots, whichever pools send
them; its size comes from the remote's config. And the upload driver's step contract."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from registry_client.backends.base import Limiter, ObjectInfo, PartSource, Upload, upload
from registry_client.backends.file import FileBackend
from registry_client.errors import ConfigError, RemoteUnavailable
from registry_client.retry import RetryingBackend, RetryPolicy


class _Gauge:
    def __init__(self) -> None:
        self.now = self.peak = 0
        self._lock = threading.Lock()

    def __call__(self, _: Any) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        time.sleep(0.01)
        with self._lock:
            self.now -= 1


def test_pools_sharing_a_limiter_never_exceed_its_slots() -> None:
    limiter, gauge = Limiter(3), _Gauge()
    pools = [
        threading.Thread(target=limiter.map, args=(gauge, range(12)), kwargs={"wanted": 8})
        for _ in range(4)
    ]
    for pool in pools:
        pool.start()
    for pool in pools:
        pool.join()
    assert gauge.peak == 3
    assert limiter.width(8) == 3 and limiter.width(8, items=2) == 2 and limiter.width(0) == 1


def test_first_failure_is_raised_and_the_rest_dropped() -> None:
    ran: list[int] = []

    def work(i: int) -> int:
        if i == 1:
            raise RemoteUnavailable("boom")
        time.sleep(0.05)
        ran.append(i)
        return i

    with pytest.raises(RemoteUnavailable):
        Limiter(2).map(work, list(range(40)))
    assert len(ran) < 40
    assert Limiter(2).map(lambda i: i * i, [1, 2, 3]) == [1, 4, 9]


@pytest.mark.parametrize("value", [0, -1, 2000, "x", True, 1.5])
def test_max_connections_must_be_a_sane_integer(value: Any) -> None:
    with pytest.raises(ConfigError):
        Limiter.from_options({"max_connections": value})
    assert Limiter.from_options({"max_connections": "12"}).slots == 12
    assert Limiter.from_options({}, default=5).slots == 5


# -- the upload driver, over a backend whose steps fail on demand ---------------------------


class _Bytes(PartSource):
    def __init__(self, data: bytes) -> None:
        self.data, self.size = data, len(data)

    def open(self, offset: int, length: int) -> BinaryIO:
        return io.BytesIO(self.data[offset : offset + length])


class _Flaky(Upload):
    def __init__(self, size: int, fail: dict[int, int]) -> None:
        self.key, self.fail = "k", fail
        self.parts = [(o, min(4, size - o)) for o in range(0, size, 4)]
        self.got: dict[int, bytes] = {}
        self.sends: list[int] = []
        self.aborted = False

    def put_part(self, index: int, body: BinaryIO) -> None:
        self.sends.append(index)
        if self.fail.get(index, 0) > 0:
            self.fail[index] -= 1
            body.read(2)  # half-sent, then the connection broke
            raise RemoteUnavailable(f"part {index + 1}: 503")
        self.got[index] = body.read()

    def complete(self) -> ObjectInfo:
        return ObjectInfo(self.key, sum(len(v) for v in self.got.values()))

    def abort(self) -> None:
        self.aborted = True


class _FlakyBackend(FileBackend):
    def __init__(self, tmp: Path, fail: dict[int, int]) -> None:
        super().__init__(tmp)
        self.fail, self.session = fail, None

    def start_upload(self, key: str, size: int, metadata: Any, *, part_size: int) -> Upload:
        self.session = _Flaky(size, self.fail)
        return self.session


def test_a_failed_part_is_read_again_and_resent_alone(tmp_path: Path) -> None:
    data = bytes(range(22))
    inner = _FlakyBackend(tmp_path, {2: 2})
    backend = RetryingBackend(inner, RetryPolicy(base_delay=0), sleep=lambda _: None)
    info = backend.put("k", _Bytes(data), {}, part_size=4, concurrency=3)
    session = inner.session
    assert info.size == 22 and b"".join(session.got[i] for i in range(6)) == data
    assert sorted(session.sends) == [0, 1, 2, 2, 2, 3, 4, 5]  # part 3 thrice, others once
    assert not session.aborted


def test_a_part_out_of_retries_aborts_the_upload(tmp_path: Path) -> None:
    inner = _FlakyBackend(tmp_path, {1: 99})
    backend = RetryingBackend(inner, RetryPolicy(base_delay=0), sleep=lambda _: None)
    with pytest.raises(RemoteUnavailable, match="gave up after 5 attempts"):
        backend.put("k", _Bytes(bytes(22)), {}, part_size=4, concurrency=2)
    assert inner.session.aborted and inner.session.sends.count(1) == 5


def test_without_the_retry_wrapper_a_step_runs_once(tmp_path: Path) -> None:
    inner = _FlakyBackend(tmp_path, {0: 1})
    with pytest.raises(RemoteUnavailable):
        upload(inner, "k", _Bytes(bytes(9)), {}, part_size=4, concurrency=1)
    assert inner.session.sends == [0] and inner.session.aborted
