"""Timing commands: wall clock, CPU (user+sys) and peak RSS via GNU time; summaries."""

from __future__ import annotations

import contextlib
import hashlib
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GNU_TIME = "/usr/bin/time"
TIME_FORMAT = "%U %S %M %I %O"


@dataclass
class Sample:
    wall: float  # seconds
    user: float
    sys: float
    rss_mb: float  # peak resident set size, MB (10^6 bytes)
    rc: int
    stdout: str = ""
    stderr: str = ""
    server_cpu: float | None = None  # CPU seconds the loopback server spent meanwhile
    fs_in_mb: float = 0.0  # bytes read from storage (not the page cache), MB
    fs_out_mb: float = 0.0
    #: CPU seconds of each thread of the command (with `threads`), busiest first:
    #: [[OS thread name, seconds], ...]
    threads: list[list[Any]] | None = None

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    def brief(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("stdout")
        data.pop("stderr")
        return data


class CommandFailed(RuntimeError):
    pass


def run_timed(
    cmd: Sequence[str],
    env: dict[str, str],
    *,
    cwd: Path | None = None,
    timeout: float = 1800,
    watch: Sequence[int] = (),
    threads: bool = False,
) -> Sample:
    """Run cmd under GNU time; wall clock measured here with perf_counter. With `watch`
    (server PIDs), also the CPU those processes and their children used meanwhile; with
    `threads`, the CPU of each of the command's threads (sampled from /proc)."""
    before = proc_cpu(watch) if watch else 0.0
    with tempfile.NamedTemporaryFile("r", prefix="bench-time-", suffix=".txt") as out:
        full = [GNU_TIME, "-o", out.name, "-f", TIME_FORMAT, *cmd]
        start = time.perf_counter()
        proc = subprocess.Popen(
            full,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        seen: dict[tuple[int, int], tuple[str, float]] = {}
        try:
            if threads:
                deadline = start + timeout
                while proc.poll() is None and time.perf_counter() < deadline:
                    seen.update(thread_cpu(proc.pid))
                    time.sleep(THREAD_SAMPLE)
            stdout, stderr = proc.communicate(
                timeout=max(1.0, start + timeout - time.perf_counter())
            )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        wall = time.perf_counter() - start
        user, sys_, rss_kb, blocks_in, blocks_out = _parse_time(Path(out.name).read_text())
    server = proc_cpu(watch) - before if watch else None
    by_thread = sorted(([name, cpu] for name, cpu in seen.values()), key=lambda t: -t[1])
    return Sample(
        wall,
        user,
        sys_,
        rss_kb * 1024 / 1e6,
        proc.returncode,
        stdout.strip(),
        stderr.strip()[-2000:],
        server,
        blocks_in * 512 / 1e6,
        blocks_out * 512 / 1e6,
        by_thread if threads else None,
    )


THREAD_SAMPLE = 0.05  # seconds between looks at the threads (a thread's last 50 ms may be lost)


def thread_cpu(root: int) -> dict[tuple[int, int], tuple[str, float]]:
    """(pid, tid) -> (OS thread name, user+sys CPU seconds) of every thread of the
    processes under `root` (GNU time and the command it runs)."""
    ticks = os.sysconf("SC_CLK_TCK")
    found: dict[tuple[int, int], tuple[str, float]] = {}
    try:  # GNU time's one child, cheaply (not a walk of all of /proc at every sample)
        children = {int(c) for c in Path(f"/proc/{root}/task/{root}/children").read_text().split()}
    except (OSError, ValueError):
        children = _descendants([root]) - {root}
    for pid in children:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError, IndexError, ValueError):
                    task = Path(f"/proc/{pid}/task/{tid}")
                    fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                    name = (task / "comm").read_text().strip()
                    found[(pid, int(tid))] = (name, (int(fields[11]) + int(fields[12])) / ticks)
    return found


def _parse_time(text: str) -> tuple[float, ...]:
    """user, sys, max RSS KB, 512-byte blocks read and written (GNU time %U %S %M %I %O)."""
    for line in reversed(text.strip().splitlines()):
        parts = line.split()
        if len(parts) == 5:
            try:
                return tuple(float(p) for p in parts)
            except ValueError:
                continue
    return 0.0, 0.0, 0.0, 0.0, 0.0


def _descendants(roots: Sequence[int]) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                text = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(text.rsplit(")", 1)[1].split()[1])
    found, todo = set(roots), list(roots)
    while todo:
        pid = todo.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                found.add(child)
                todo.append(child)
    return found


def proc_cpu(roots: Sequence[int]) -> float:
    """user+sys CPU seconds of these processes and all their live descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in _descendants(roots):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def checked(sample: Sample, what: str) -> Sample:
    if sample.rc != 0:
        raise CommandFailed(f"{what}: exit {sample.rc}: {sample.stderr[-600:]}")
    return sample


def run_concurrently(
    cmds: list[list[str]],
    env: dict[str, str],
    *,
    cwd: Path | None = None,
    timeout: float = 1800,
    errors: list[str] | None = None,
) -> tuple[float, list[int], list[str]]:
    """Start every command at once; wall time until the last exits, exit codes, stdouts
    (and the last stderr line of each failed one appended to `errors`)."""
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for cmd in cmds
    ]
    outs: list[str] = []
    codes: list[int] = []
    deadline = start + timeout
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.perf_counter()))
            outs.append(out.strip())
            codes.append(proc.returncode)
            if proc.returncode and errors is not None:
                errors.append((err.strip().splitlines() or [""])[-1][:300])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return time.perf_counter() - start, codes, outs


def summary(values: Sequence[float]) -> dict[str, float]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"min": float("nan"), "median": float("nan"), "max": float("nan"), "n": 0}
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals), "n": len(vals)}


def ratios(num: Sequence[float], den: Sequence[float]) -> dict[str, float]:
    """Per-repeat ratios (runs are interleaved, so repeat i of each ran side by side)."""
    return summary([a / b for a, b in zip(num, den, strict=False) if b > 0])


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs (0 with fewer than two distinct xs)."""
    if len(set(xs)) < 2:
        return 0.0
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    num = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    den = sum((x - mean_x) ** 2 for x in xs)
    return num / den


def hash_floor(n_bytes: int = 1024**3, block: int = 4 * 1024**2) -> dict[str, float]:
    """CPU seconds to md5 + sha256 n_bytes in-process (the least a verified pull costs)."""
    data = os.urandom(block)
    result: dict[str, float] = {}
    for names in (("md5",), ("sha256",), ("md5", "sha256")):
        hashers = [hashlib.new(n) for n in names]
        start = time.process_time()
        for _ in range(n_bytes // block):
            for h in hashers:
                h.update(data)
        result["+".join(names)] = (time.process_time() - start) * (1024**3 / n_bytes)
    return result


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1
