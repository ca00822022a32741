"""The node cache under load and faults (issue: one download per node, nothing partial).

A fault-injecting proxy on 127.0.0.1 sits between the CLI and a real S3 server (moto):
it counts the bytes the store serves and injects resets, error bursts, stalls,
truncations, wrong lengths and corruption.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from registry_client.config import RemoteConfig
from tests.conftest import new_bucket
from tests.support.backend_contract import write_random
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.helpers import console_script, run_cli, s3_options, write_config

pytestmark = pytest.mark.servers
MiB = 1024 * 1024
KEY = "lab/app:1.sif"


class Rig:
    """A bucket behind a fault proxy, a config pointing at the proxy, a node cache."""

    def __init__(
        self, server: Any, tmp: Path, proxy: FaultProxy, timeouts: dict[str, int] | None = None
    ) -> None:
        self.proxy = proxy
        self.server = server
        self.bucket = new_bucket(server)
        options = {**s3_options(server, self.bucket), "endpoint_url": proxy.url, **(timeouts or {})}
        cfg = write_config(tmp / "config.toml", {"lab": RemoteConfig("lab", "s3", options)}, "lab")
        with open(cfg, "a") as fh:
            fh.write("\n[transfer]\nchunk_size = 1048576\nconcurrency = 4\n")
        self.cache = tmp / "nodecache"
        self.env = {
            **os.environ,
            "REGISTRY_CLIENT_CONFIG": str(cfg),
            "REGISTRY_CLIENT_CACHE_DIR": str(self.cache),
        }
        self.tmp = tmp

    def push(self, size: int, seed: int = 0, ref: str = "lab/app:1") -> bytes:
        data = write_random(self.tmp / f"img-{seed}.sif", size, seed=seed)
        result = run_cli("push", str(self.tmp / f"img-{seed}.sif"), ref, env=self.env)
        assert result.returncode == 0, result.stderr
        self.proxy.reset_stats()
        return data

    def pull(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_cli("pull", "--json", *args, "lab/app:1", env=self.env, timeout=timeout)

    def spawn(
        self, *args: str, stderr: Any = subprocess.PIPE, verbose: bool = False
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*console_script(), *(["-v"] if verbose else []), "pull", "--json", *args, "lab/app:1"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )

    def served(self) -> int:
        return self.proxy.stats.get_bytes_matching("lab/app")

    def published(self) -> list[str]:
        folder = self.cache / "v1" / "sif" / "sha256"
        names = []
        for path in folder.glob("*.sif") if folder.is_dir() else []:
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem
            names.append(path.stem)
        return names


#: Short timeouts, so that the stall and fault tests give up in seconds, not minutes.
FAULT_TIMEOUTS = {"read_timeout": 2, "connect_timeout": 2}


@pytest.fixture
def rig(moto_server: Any, tmp_path: Path) -> Iterator[Rig]:
    with FaultProxy(moto_server.s3_endpoint) as proxy:
        yield Rig(moto_server, tmp_path, proxy, FAULT_TIMEOUTS)


@pytest.fixture
def herd_rig(moto_server: Any, tmp_path: Path) -> Iterator[Rig]:
    """The product's own timeouts. With 2 s ones, the 32 processes starting at once on 2
    cores starved the store long enough for the holder's reads to time out: it retried
    (correctly), and the bytes in flight on the dropped connections counted twice."""
    with FaultProxy(moto_server.s3_endpoint) as proxy:
        yield Rig(moto_server, tmp_path, proxy)


def run_herd(
    rig: Rig, n: int, verbose: bool = False
) -> tuple[list[dict[str, Any]], list[str], float]:
    """Each pull's result (with its "pid" added), its stderr, and the wall time."""
    start = time.perf_counter()
    procs = [rig.spawn(verbose=verbose) for _ in range(n)]
    outs = [p.communicate(timeout=300) for p in procs]
    wall = time.perf_counter() - start
    assert [p.returncode for p in procs] == [0] * n, [o[1][-300:] for o in outs]
    results = [{**json.loads(o[0]), "pid": p.pid} for p, o in zip(procs, outs, strict=True)]
    return results, [o[1] for o in outs], wall


@pytest.mark.parametrize("n", [2, 8, pytest.param(32, marks=pytest.mark.slow)])
def test_thundering_herd_downloads_once(herd_rig: Rig, n: int) -> None:
    rig = herd_rig
    size = 24 * MiB
    data = rig.push(size, seed=n)
    results, errs, wall = run_herd(rig, n, verbose=True)
    served = rig.served()
    assert len({r["path"] for r in results}) == 1
    assert sum(not r["cached"] for r in results) == 1
    assert Path(results[0]["path"]).read_bytes() == data
    # Every waiter waited for the one live holder: nobody took its download over.
    holder = next(i for i, r in enumerate(results) if not r["cached"])
    named = {int(pid) for pid in re.findall(r"waiting for pid (\d+)", "".join(errs))}
    assert named <= {results[holder]["pid"]}
    retries = [line for line in errs[holder].splitlines() if "retry" in line]
    assert served == size, f"store served {served / size:.2f}x the image; holder: {retries}"
    # The unavoidable cost: one cold pull, then N processes hitting a warm cache at once.
    run_cli("cache", "clean", env=rig.env)
    t0 = time.perf_counter()
    assert rig.pull().returncode == 0
    cold = time.perf_counter() - t0
    _, _, warm = run_herd(rig, n)
    print(
        f"\nherd N={n}: served {served / size:.2f}x image; wall {wall:.2f}s vs cold+warm "
        f"{cold:.2f}+{warm:.2f}s = ratio {wall / (cold + warm):.2f}"
    )


def wait_for(predicate: Any, timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def resume_state(rig: Rig) -> list[Any]:
    for path in (rig.cache / "v1" / "tmp").glob("*.state"):
        try:
            return json.loads(path.read_text()).get("done", [])
        except (OSError, ValueError):
            return []
    return []


def test_waiter_takes_over_when_holder_dies(rig: Rig, tmp_path: Path) -> None:
    data = rig.push(16 * MiB, seed=1)  # 4 ranges at a time, each at 0.5 MiB/s: ~8 s
    rig.proxy.add_fault(Fault.slow(MiB // 2, times=None, path="lab/app", has_range=True))
    holder = rig.spawn()
    wait_for(lambda: len(resume_state(rig)) >= 1, what="the holder's first range")
    log = open(tmp_path / "waiter.err", "w")  # noqa: SIM115 - closed below
    waiter = rig.spawn(stderr=log)
    wait_for(
        lambda: "waiting for pid" in (tmp_path / "waiter.err").read_text(),
        what="the waiter's message",
    )
    assert f"pid {holder.pid}" in (tmp_path / "waiter.err").read_text()
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    rig.proxy.clear_faults()
    out, _ = waiter.communicate(timeout=120)
    log.close()
    assert waiter.returncode == 0, (tmp_path / "waiter.err").read_text()
    result = json.loads(out)
    assert Path(result["path"]).read_bytes() == data
    assert result["resumed_bytes"] > 0  # it continued the dead holder's download


def test_resume_after_kill_fetches_only_the_rest(rig: Rig) -> None:
    size = 16 * MiB
    data = rig.push(size, seed=2)
    rig.proxy.add_fault(Fault.slow(MiB, times=None, path="lab/app", has_range=True))
    proc = rig.spawn()
    wait_for(lambda: len(resume_state(rig)) >= 4, what="four finished ranges")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert rig.published() == []
    rig.proxy.clear_faults()
    rig.proxy.reset_stats()
    result = rig.pull()
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    served = rig.served()
    print(f"\nresume: {record['resumed_bytes']} bytes reused, {served} fetched of {size}")
    assert record["resumed_bytes"] >= 4 * MiB
    assert served + record["resumed_bytes"] <= size + 4 * MiB  # at most the ranges in flight
    assert Path(record["path"]).read_bytes() == data


def test_resume_restarts_when_the_object_changed(rig: Rig) -> None:
    rig.push(8 * MiB, seed=3)
    rig.proxy.add_fault(Fault.slow(MiB // 2, times=None, path="lab/app", has_range=True))
    proc = rig.spawn()
    wait_for(lambda: len(resume_state(rig)) >= 2, what="two finished ranges")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    rig.proxy.clear_faults()
    new = rig.push(8 * MiB, seed=4)  # a new version under the same tag
    result = rig.pull()
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["resumed_bytes"] == 0 and rig.served() == 8 * MiB
    assert Path(record["path"]).read_bytes() == new


RECOVERABLE = {
    "reset mid-body": Fault.reset_after(300_000, times=2, path="lab/app", has_range=True),
    "503 burst": Fault.status(503, times=3, retry_after=1, path="lab/app"),
    "429 burst": Fault.status(429, times=2, retry_after=0, path="lab/app"),
    "500 burst": Fault.status(500, times=2, path="lab/app"),
    "stalled body": Fault.stall(100_000, 8, times=1, path="lab/app", has_range=True),
    "slow body": Fault.slow(8 * MiB, times=None, path="lab/app", has_range=True),
    "truncated body": Fault.truncate(200_000, times=2, path="lab/app", has_range=True),
    "content-length too long": Fault.wrong_length(100, times=2, path="lab/app", has_range=True),
    "content-length too short": Fault.wrong_length(-100, times=2, path="lab/app", has_range=True),
}


@pytest.mark.parametrize("name", list(RECOVERABLE))
def test_fault_classes_recover_with_a_verified_file(rig: Rig, name: str) -> None:
    data = rig.push(6 * MiB, seed=5)
    fault = rig.proxy.add_fault(RECOVERABLE[name])
    start = time.perf_counter()
    result = rig.pull(timeout=90)
    elapsed = time.perf_counter() - start
    print(f"\nfault {name!r}: exit {result.returncode} in {elapsed:.1f}s, fired {fault.fired}x")
    assert fault.fired >= 1
    assert result.returncode == 0, result.stderr
    assert Path(json.loads(result.stdout)["path"]).read_bytes() == data
    assert len(rig.published()) == 1


def test_persistent_errors_give_exit_6_quickly(rig: Rig) -> None:
    rig.push(2 * MiB, seed=6)
    rig.proxy.add_fault(Fault.status(503, times=None, path="lab/app"))
    start = time.perf_counter()
    result = rig.pull(timeout=90)
    elapsed = time.perf_counter() - start
    print(f"\npersistent 503: exit {result.returncode} in {elapsed:.1f}s")
    assert result.returncode == 6
    assert result.stderr.startswith("error: ") and "gave up after" in result.stderr
    assert rig.published() == []


def test_stall_every_time_is_exit_6_not_a_hang(rig: Rig) -> None:
    rig.push(2 * MiB, seed=7)
    rig.proxy.add_fault(Fault.stall(1000, 30, times=None, path="lab/app", has_range=True))
    start = time.perf_counter()
    result = rig.pull(timeout=120)
    print(f"\npersistent stall: exit {result.returncode} in {time.perf_counter() - start:.1f}s")
    assert result.returncode == 6 and rig.published() == []


@pytest.mark.parametrize("times", [1, None])
def test_corrupted_bytes_are_never_published(rig: Rig, times: int | None) -> None:
    rig.push(3 * MiB, seed=8)
    rig.proxy.add_fault(Fault.corrupt(5000, length=4, times=times, path="lab/app", has_range=True))
    result = rig.pull()
    assert result.returncode == 4, result.stderr
    assert "nothing was published" in result.stderr
    assert rig.published() == []
    assert list((rig.cache / "v1" / "tmp").glob("*.resume")) == []


def test_offline_and_pinned_pulls_send_no_request(rig: Rig) -> None:
    data = rig.push(1 * MiB, seed=9)
    first = json.loads(rig.pull().stdout)
    rig.proxy.reset_stats()
    pinned = run_cli("pull", f"lab/app:1@sha256:{first['sha256']}", env=rig.env)
    offline = run_cli("pull", "--offline", "lab/app:1", env=rig.env)
    assert pinned.stdout.strip() == offline.stdout.strip() == first["path"]
    assert rig.proxy.stats.total_requests == 0
    assert Path(first["path"]).read_bytes() == data


def test_disk_full_is_exit_1_and_leaves_nothing(rig: Rig, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a small tmpfs here")
    try:
        rig.push(8 * MiB, seed=10)
        result = run_cli(
            "pull", "lab/app:1", env={**rig.env, "REGISTRY_CLIENT_CACHE_DIR": str(small)}
        )
        assert result.returncode == 1, result.stderr
        assert "no space left" in result.stderr and "Traceback" not in result.stderr
        assert list((small / "v1" / "sif" / "sha256").iterdir()) == []
        assert [p for p in (small / "v1" / "tmp").iterdir()] == []
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_unwritable_cache_during_download_is_exit_5(rig: Rig, tmp_path: Path) -> None:
    rig.push(1 * MiB, seed=11)
    assert run_cli("cache", "dir", env=rig.env).returncode == 0
    assert rig.pull().returncode == 0  # the cache exists and works...
    rig.push(1 * MiB, seed=12)  # ...then a new version must be downloaded into it
    tmp_dir = rig.cache / "v1" / "tmp"
    if subprocess.run(["chattr", "+i", str(tmp_dir)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        result = rig.pull()
        assert result.returncode == 5, result.stderr
        assert "permission denied" in result.stderr and "Traceback" not in result.stderr
    finally:
        subprocess.run(["chattr", "-i", str(tmp_dir)], check=False)
    assert len(rig.published()) == 1 and list(tmp_dir.iterdir()) == []


def test_ctrl_c_mid_download_exits_130_promptly_and_can_resume(rig: Rig) -> None:
    data = rig.push(16 * MiB, seed=13)
    rig.proxy.add_fault(Fault.slow(MiB, times=None, path="lab/app", has_range=True))
    proc = rig.spawn()
    wait_for(lambda: len(resume_state(rig)) >= 1, what="a finished range")
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    _out, err = proc.communicate(timeout=30)
    print(f"\nCtrl-C: exit {proc.returncode} after {time.monotonic() - start:.1f}s")
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert time.monotonic() - start < 10
    assert rig.published() == []
    rig.proxy.clear_faults()
    record = json.loads(rig.pull().stdout)
    assert record["resumed_bytes"] > 0
    assert Path(record["path"]).read_bytes() == data
