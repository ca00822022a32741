"""The migration figures: `registry-client migrate` vs `rclone copy` between the same remotes.

On the loopback Swift all-in-one, a native Swift container (the site's registry) is copied
into an S3 bucket of the same server (its s3api), interleaved repeat by repeat, a fresh
bucket each run:

* **registry**: 30 images, 442 MB, one of them an SLO the `swift` CLI wrote (no metadata
  of ours, 16 MiB segments) and one an SLO of ours: our wall time / `rclone copy
  --transfers 8` (its default checks: size, and the md5 of what it uploaded); peak RSS;
  our CPU per thread (sampled from /proc); how much the node cache grew.
* **killed**: `kill -9` when half the bytes are uploaded, then the same command again:
  bytes uploaded in all / the registry's size (a counting proxy in front of the
  destination), ours and rclone's.
* **1,000 small images**: the first copy, then deciding that an already migrated registry
  needs nothing: our `migrate` / `rclone copy`, each over the bucket it filled itself.

Every figure is a ratio measured in the same run; nothing is asserted.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import tomlkit

from tests.benchmarks.measure import Sample, _descendants, ratios, run_timed, summary
from tests.benchmarks.world import MiB, Target, swift_conn

OURS = "registry-client migrate"
RCLONE = "rclone copy --transfers 8"
SOURCE = "mig-src"
SMALL = "mig-small"
# MB (10^6 bytes) of the 30 images; the second is written by the swift CLI as an SLO.
SIZES_MB = [100, 60, 40, 30, 25, 22, 20, 18, 16, 14, 12, 11, 10, 9, 8, 7, 6, 5, 5, 4, 4, 3]
SIZES_MB += [3, 2, 2, 2, 1, 1, 1, 1]
CLI_SLO_SEGMENT = 16 * MiB
SMALL_COUNT = 1000
SMALL_SIZE = 64 * 1024


class Migration:
    """The two remotes, as registry-client and rclone see them, and the runs' helpers."""

    def __init__(self, bench: Any, swift: Target, s3: Target) -> None:
        self.bench, self.swift, self.s3 = bench, swift, s3
        self.work = bench.world.work / "migration"
        self.work.mkdir(parents=True, exist_ok=True)
        self.runs = 0

    # -- environments -------------------------------------------------------------------
    def rc_env(
        self, bucket: str, source: str = SOURCE, endpoint: str | None = None
    ) -> dict[str, str]:
        self.runs += 1
        path = self.work / f"config-{self.runs}.toml"
        remotes = {
            "onprem": {**self.swift.remote(), "bucket": source},
            "cloud": {**self.s3.remote(endpoint), "bucket": bucket},
        }
        data: dict[str, Any] = {"default_remote": "onprem", "remotes": remotes}
        if self.bench.world.transfer:
            data["transfer"] = dict(self.bench.world.transfer)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
        with os.fdopen(fd, "w") as fh:
            fh.write(tomlkit.dumps(data))
        env = self.bench.world.base_env()
        env["REGISTRY_CLIENT_CONFIG"] = str(path)
        env["REGISTRY_CLIENT_CACHE_DIR"] = str(self.cache())
        return env

    def cache(self) -> Path:
        return self.bench.scratch("migrate-cache")

    def rclone_env(self, endpoint: str | None = None) -> dict[str, str]:
        server = self.swift.server
        env = self.bench.world.base_env()
        env.update(
            {
                "RCLONE_CONFIG_ONPREM_TYPE": "swift",
                "RCLONE_CONFIG_ONPREM_USER": server.user,
                "RCLONE_CONFIG_ONPREM_KEY": server.key,
                "RCLONE_CONFIG_ONPREM_AUTH": server.auth_url,
                "RCLONE_CONFIG_CLOUD_TYPE": "s3",
                "RCLONE_CONFIG_CLOUD_PROVIDER": "Other",
                "RCLONE_CONFIG_CLOUD_ENDPOINT": endpoint or server.s3_endpoint,
                "RCLONE_CONFIG_CLOUD_ACCESS_KEY_ID": server.access_key,
                "RCLONE_CONFIG_CLOUD_SECRET_ACCESS_KEY": server.secret_key,
                "RCLONE_CONFIG_CLOUD_REGION": "us-east-1",
                "RCLONE_CONFIG_CLOUD_FORCE_PATH_STYLE": "true",
            }
        )
        return env

    def ours(self) -> list[str]:
        """The remotes come from the config rc_env wrote."""
        return [self.bench.rc, "migrate", "--json", "onprem", "cloud"]

    def rclone(self, bucket: str, source: str = SOURCE) -> list[str]:
        exe = self.bench.tools.get("rclone")
        return [exe, "copy", "-q", "--transfers", "8", f"onprem:{source}", f"cloud:{bucket}"]

    # -- buckets ------------------------------------------------------------------------
    def new_bucket(self, tag: str) -> str:
        from tests.benchmarks.world import s3_client

        name = f"mig-{tag}-{self.runs}-{os.urandom(3).hex()}"
        s3_client(self.s3).create_bucket(Bucket=name)
        return name

    def listing(self, bucket: str) -> dict[str, int]:
        from tests.benchmarks.world import s3_client

        client = s3_client(self.s3)
        found: dict[str, int] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            found.update({o["Key"]: int(o["Size"]) for o in page.get("Contents", [])})
        return found

    def drop_bucket(self, bucket: str) -> None:
        from tests.benchmarks.world import s3_client

        client = s3_client(self.s3)
        try:
            for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
                client.abort_multipart_upload(
                    Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
            keys = list(self.listing(bucket))
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda k: client.delete_object(Bucket=bucket, Key=k), keys))
            client.delete_bucket(Bucket=bucket)
        except Exception as exc:  # noqa: BLE001 - cleanup only
            self.bench.note(f"could not remove bucket {bucket}: {exc}")


# -- the source registries ------------------------------------------------------------------


def fill_registry(mig: Migration) -> dict[str, int]:
    """30 images in native Swift: 29 pushed by registry-client, one SLO by the swift CLI."""
    from registry_client import sif

    conn = swift_conn(mig.swift)
    conn.put_container(SOURCE)
    images: dict[str, int] = {}
    env = mig.rc_env("unused")
    for i, mb in enumerate(SIZES_MB):
        path = mig.work / f"img-{i}.sif"
        sif.make_test_sif(path, mb * 1000 * 1000, seed=500 + i)
        ref = f"lab/app{i:02d}:1"
        if i == 1:
            _swift_cli_slo(mig, path, f"{ref}.sif")
        else:
            done = subprocess.run(
                [mig.bench.rc, "push", str(path), f"onprem:{ref}"],
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                stdin=subprocess.DEVNULL,
            )
            if done.returncode != 0:
                raise RuntimeError(f"push {ref}: {done.stderr[-300:]}")
        images[f"{ref}.sif"] = path.stat().st_size
        path.unlink()
    return images


def _swift_cli_slo(mig: Migration, path: Path, name: str) -> None:
    server = mig.swift.server
    env = {
        **mig.bench.world.base_env(),
        "ST_AUTH": server.auth_url,
        "ST_USER": server.user,
        "ST_KEY": server.key,
    }
    cmd = [
        mig.bench.tools.get("swift") or "swift",
        "upload",
        "--use-slo",
        "-S",
        str(CLI_SLO_SEGMENT),
        "--object-name",
        name,
        SOURCE,
        str(path),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"swift upload: {done.stderr[-300:]}")


def fill_small(mig: Migration) -> int:
    """1,000 small images with our metadata, written straight into Swift (as a push would)."""
    conn_pool = threading.local()
    mig_conn = swift_conn(mig.swift)
    mig_conn.put_container(SMALL)

    def put(i: int) -> None:
        conn = getattr(conn_pool, "conn", None) or swift_conn(mig.swift)
        conn_pool.conn = conn
        data = hashlib.sha256(str(i).encode()).digest() * (SMALL_SIZE // 32)
        headers = {
            "X-Object-Meta-Sha256": hashlib.sha256(data).hexdigest(),
            "X-Object-Meta-Size": str(len(data)),
            "X-Object-Meta-Created": "2025-01-01T00:00:00Z",
            "X-Object-Meta-Layout": "1",
        }
        conn.put_object(
            SMALL,
            f"c{i % 20}/img{i}:1.sif",
            data,
            etag=hashlib.md5(data).hexdigest(),
            headers=headers,
        )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(SMALL_COUNT)))
    return SMALL_COUNT * SMALL_SIZE


# -- sampling our threads --------------------------------------------------------------------


def run_sampled(cmd: list[str], env: dict[str, str]) -> tuple[Sample, list[float]]:
    """run_timed, and the CPU seconds of each thread of the processes it started (busiest
    first), sampled from /proc every 50 ms (a thread's last sample is kept when it ends).
    Processes that already ran before (the loopback servers) are not counted."""
    seen: dict[tuple[int, int], float] = {}
    stop = threading.Event()
    ticks = os.sysconf("SC_CLK_TCK")

    me = os.getpid()
    before = _descendants([me])  # the servers: not ours to count

    def sample() -> None:
        while not stop.wait(0.05):
            for pid in _descendants([me]) - before:
                for tid in _tasks(pid):
                    cpu = _task_cpu(pid, tid, ticks)
                    if cpu is not None:
                        seen[(pid, tid)] = cpu

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = run_timed(cmd, env)
    finally:
        stop.set()
        sampler.join()
    threads = sorted((v for v in seen.values() if v > 0.005), reverse=True)
    return result, threads


def _tasks(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _task_cpu(pid: int, tid: int, ticks: int) -> float | None:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as fh:
            text = fh.read()
        if "(time)" in text.split(" ", 2)[1]:
            return None
        fields = text.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks
    except (OSError, IndexError, ValueError):
        return None


def _cache_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- the figures ----------------------------------------------------------------------------


def migration_figures(bench: Any, repeats: int) -> dict[str, Any]:
    world = bench.world
    swift, s3 = world.targets.get("swift"), world.targets.get("swift-s3api")
    if swift is None or s3 is None or not bench.tools.get("rclone"):
        bench.note("migrate figures need the swift and swift-s3api targets and rclone")
        return {}
    mig = Migration(bench, swift, s3)
    bench.log("migrate: filling the source registry (30 images, 442 MB)")
    images = fill_registry(mig)
    out = {"registry": registry_figure(mig, images, repeats)}
    bench.log("migrate: killed at half the bytes, then run again")
    out["killed"] = killed_figure(mig, images)
    bench.log("migrate: 1,000 small images")
    fill_small(mig)
    out["small"] = small_figure(mig, repeats)
    return out


def registry_figure(mig: Migration, images: dict[str, int], repeats: int) -> dict[str, Any]:
    total = sum(images.values())
    rows: dict[str, list[Sample]] = {OURS: [], RCLONE: []}
    threads: list[list[float]] = []
    growth: list[int] = []
    for rep in range(repeats):
        for tool in [OURS, RCLONE] if rep % 2 == 0 else [RCLONE, OURS]:
            bucket = mig.new_bucket("reg")
            if tool == OURS:
                env = mig.rc_env(bucket)
                cache = Path(env["REGISTRY_CLIENT_CACHE_DIR"])
                sample, per_thread = run_sampled(mig.ours(), env)
                threads.append(per_thread)
                growth.append(_cache_bytes(cache))
            else:
                sample = run_timed(mig.rclone(bucket), mig.rclone_env())
            got = mig.listing(bucket)
            if sample.rc != 0 or got != images:
                mig.bench.note(
                    f"{tool}: exit {sample.rc}, {len(got)} of {len(images)} objects: "
                    f"{sample.stderr[-300:]!r}"
                )
            rows[tool].append(sample)
            mig.drop_bucket(bucket)
    return {
        "images": len(images),
        "bytes": total,
        "tools": {t: _stats(s) for t, s in rows.items()},
        "ratio": ratios([s.wall for s in rows[OURS]], [s.wall for s in rows[RCLONE]]),
        "threads": [[round(t, 2) for t in run[:8]] for run in threads],
        "cache_growth": growth,
    }


def _stats(samples: list[Sample]) -> dict[str, Any]:
    return {
        "wall": summary([s.wall for s in samples]),
        "cpu": summary([s.cpu for s in samples]),
        "rss_mb": summary([s.rss_mb for s in samples]),
        "walls": [round(s.wall, 2) for s in samples],
    }


def killed_figure(mig: Migration, images: dict[str, int]) -> dict[str, Any]:
    """Bytes uploaded in all (first run killed at half, then the rerun) / the registry."""
    from tests.support.faultproxy import FaultProxy

    total = sum(images.values())
    out: dict[str, Any] = {"bytes": total, "largest": max(images.values()), "tools": {}}
    for tool in (OURS, RCLONE):
        bucket = mig.new_bucket("kill")
        with FaultProxy(mig.swift.server.s3_endpoint, idle_timeout=120) as proxy:
            if tool == OURS:
                env = mig.rc_env(bucket, endpoint=proxy.url)
                cmd = mig.ours()
            else:
                env, cmd = mig.rclone_env(endpoint=proxy.url), mig.rclone(bucket)
            killed_at = _kill_at(cmd, env, lambda: proxy.stats.sent_bytes.get("PUT", 0), total // 2)
            again = run_timed(cmd, env)
            sent = proxy.stats.sent_bytes.get("PUT", 0)
        got = mig.listing(bucket)
        if again.rc != 0 or got != images:
            mig.bench.note(f"{tool} after a kill: exit {again.rc}, {len(got)} objects")
        out["tools"][tool] = {
            "killed_at": killed_at,
            "sent": sent,
            "sent_ratio": round(sent / total, 3),
            "within_goal": sent <= total + out["largest"],
        }
        mig.drop_bucket(bucket)
    return out


def _kill_at(cmd: list[str], env: dict[str, str], sent: Callable[[], int], when: int) -> int:
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    while sent() < when and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    at = sent()
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return at


def small_figure(mig: Migration, repeats: int) -> dict[str, Any]:
    """First copy of 1,000 small images, then deciding there is nothing left to do."""
    first: dict[str, Sample] = {}
    buckets = {OURS: mig.new_bucket("small-ours"), RCLONE: mig.new_bucket("small-rclone")}
    envs = {OURS: mig.rc_env(buckets[OURS], source=SMALL), RCLONE: mig.rclone_env()}
    cmds = {OURS: mig.ours(), RCLONE: mig.rclone(buckets[RCLONE], source=SMALL)}
    for tool in (OURS, RCLONE):
        first[tool] = run_timed(cmds[tool], envs[tool])
        count = len(mig.listing(buckets[tool]))
        if first[tool].rc != 0 or count != SMALL_COUNT:
            mig.bench.note(
                f"{tool}: first copy of the small images: exit {first[tool].rc}, {count}"
            )
    again: dict[str, list[Sample]] = {OURS: [], RCLONE: []}
    for rep in range(max(3, repeats)):
        for tool in [OURS, RCLONE] if rep % 2 == 0 else [RCLONE, OURS]:
            sample = run_timed(cmds[tool], envs[tool])
            again[tool].append(sample)
    ours_rows = [json.loads(line) for line in again[OURS][-1].stdout.splitlines() if line]
    skipped = sum(1 for r in ours_rows if r.get("status") == "skipped")
    if skipped != SMALL_COUNT:
        mig.bench.note(f"migrate over a migrated registry skipped {skipped} of {SMALL_COUNT}")
    for bucket in buckets.values():
        mig.drop_bucket(bucket)
    return {
        "images": SMALL_COUNT,
        "first": {t: round(s.wall, 2) for t, s in first.items()},
        "first_ratio": round(first[OURS].wall / first[RCLONE].wall, 3),
        "again": {t: _stats(s) for t, s in again.items()},
        "again_ratio": ratios([s.wall for s in again[OURS]], [s.wall for s in again[RCLONE]]),
    }
