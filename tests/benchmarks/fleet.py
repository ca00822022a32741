"""Fleet benchmark: node processes pull one image at once through the shipped nginx cache.

    bash scripts/bench fleet [--nodes 16] [--size 256M] [--out bench-results/fleet]

Swift all-in-one (S3 through s3api) is the store, behind a counting proxy; Debian's nginx runs
contrib/nginx/registry-client-cache.conf; each node is a `registry-client pull` process with
a cache of its own, all started at once. Measured side by side in one run, nothing asserted:

- store bytes / image size: no cache, the site cache cold and warm, 2 racks under a site cache;
- a flipped byte in the cache's copy: store bytes over the run, nodes verified, refreshes;
- bad, expired and wrong-key signatures through the cache: status and bytes;
- every cache down: time to the last node against the configured timeouts;
- CPU seconds per GB: nginx serving, the nodes (all threads, and one node's threads), Swift.

Then tests/benchmarks/fleet_model.py computes 1,000 nodes x 10 GB from those rates, and
tests/benchmarks/fleet_sim.py simulates it through each cache engine (this run's nginx rate
beside the engines' measured ranges); tests/benchmarks/signer.py times the SigV4 signer
against botocore's presigner.
Results: OUT/fleet.json and OUT/fleet.md (docs/fleet.md and docs/performance.md quote them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import tomlkit

from tests.benchmarks import fleet_sim, signer
from tests.benchmarks.fleet_model import ENGINES, GB, Engine, Hardware, Rates, simulate
from tests.benchmarks.measure import proc_cpu
from tests.benchmarks.world import parse_size, size_label

MiB = 1024 * 1024


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, work: Path, nodes: int, size: int) -> None:
        from registry_client import sif
        from tests.support.faultproxy import FaultProxy
        from tests.support.helpers import console_script, s3_client
        from tests.support.servers.swift_aio import start_swift

        self.work = work
        self.nodes = nodes
        self.rc = console_script()
        self.swift = start_swift(work / "swift")
        self.store = FaultProxy(self.swift.s3_endpoint, idle_timeout=600).start()
        self.bucket = "fleet"
        s3_client(self.swift).create_bucket(Bucket=self.bucket)
        self.image = work / "image.sif"
        sif.make_test_sif(self.image, size, seed=11)
        self.size = self.image.stat().st_size
        self.sha256 = _sha256(self.image)
        self.caches: list[Any] = []

    def close(self) -> None:
        for cache in self.caches:
            cache.stop()
        self.store.stop()
        self.swift.stop()

    # -- set-up ---------------------------------------------------------------------------
    def nginx(self, upstream: str, authz: str | None = None) -> Any:
        from tests.support.servers.nginx_cache import start_nginx_cache

        def hostport(url: str) -> str:
            return url.split("://", 1)[1]

        cache = start_nginx_cache(hostport(upstream), authz=authz and hostport(authz))
        self.caches.append(cache)
        return cache

    def config(self, name: str, **fleet: Any) -> Path:
        data: dict[str, Any] = {
            "default_remote": "lab",
            "remotes": {
                "lab": {
                    "type": "s3",
                    "bucket": self.bucket,
                    "endpoint_url": self.store.url,
                    "region": "us-east-1",
                    "access_key_id": self.swift.access_key,
                    "secret_access_key": self.swift.secret_key,
                }
            },
        }
        if fleet:
            data["fleet"] = fleet
        path = self.work / f"{name}.toml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(tomlkit.dumps(data))
        return path

    def startup_cpu(self, config: Path, repeats: int = 3) -> float:
        """CPU seconds of a pull that is a cache hit (start-up, config, HEAD): what every
        node pays whatever the size, taken off the nodes' CPU to get a rate per GB."""
        env = self.env(config)
        samples = []
        for i in range(repeats + 1):
            before = _children_cpu()
            cmd = [*self.rc, "pull", "lab/app:1"]
            subprocess.run(cmd, env=env, capture_output=True, check=True)
            if i:  # the first one fills this node's cache
                samples.append(_children_cpu() - before)
        return sorted(samples)[len(samples) // 2]

    def env(self, config: Path) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "OS_", "ST_", "REGISTRY_CLIENT_"))
        }
        env.update(
            REGISTRY_CLIENT_CONFIG=str(config),
            REGISTRY_CLIENT_CACHE_DIR=str(self.work / "nodes" / uuid.uuid4().hex[:10]),
            HOME=str(self.work / "home"),
            AWS_EC2_METADATA_DISABLED="true",
            PYTHONDONTWRITEBYTECODE="1",
        )
        return env

    def push(self) -> None:
        cmd = [*self.rc, "push", str(self.image), "lab/app:1"]
        done = subprocess.run(
            cmd, env=self.env(self.config("push")), capture_output=True, text=True
        )
        if done.returncode:
            raise RuntimeError(f"push failed: {done.stderr}")

    # -- measuring --------------------------------------------------------------------------
    def herd(self, configs: list[Path], watch: list[int] | None = None) -> dict[str, Any]:
        """One node per config, all at once: wall time to the last, store bytes, CPU, and
        every result checked (the sha256 the node reports, and the file it published)."""
        n = len(configs)
        self.store.reset_stats()
        before_children = _children_cpu()
        before_watch = proc_cpu(watch) if watch else 0.0
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                [*self.rc, "pull", "--json", "lab/app:1"],
                env=self.env(config),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
            )
            for config in configs
        ]
        results = [(p, *p.communicate(timeout=3600)) for p in procs]
        wall = time.perf_counter() - started
        watched = proc_cpu(watch) - before_watch if watch else None
        node_cpu = _children_cpu() - before_children
        verified = 0
        errors = []
        for proc, out, err in results:
            if proc.returncode == 0:
                result = json.loads(out)
                if result["sha256"] == self.sha256 and "sha256" in result["verified"]:
                    verified += _sha256(Path(result["path"])) == self.sha256
            else:
                errors.append(err.strip().splitlines()[-1:])
        return {
            "nodes": n,
            "wall_s": round(wall, 2),
            "store_copies": round(self.store.stats.get_bytes / self.size, 4),
            "verified": verified,
            "refreshed": sum("refreshed" in err for _, _, err in results),
            "fell_back": sum("reading from the store" in err for _, _, err in results),
            "node_cpu_s": round(node_cpu, 2),
            "watched_cpu_s": None if watched is None else round(watched, 2),
            "errors": errors,
        }

    def threads(self, config: Path) -> list[float]:
        """CPU seconds of the main thread of one node's pull (start-up, imports), then of each
        other thread, busiest first (sampled from /proc every 20 ms)."""
        proc = subprocess.Popen(
            [*self.rc, "pull", "--json", "lab/app:1"],
            env=self.env(config),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        ticks = os.sysconf("SC_CLK_TCK")
        seen: dict[str, float] = {}  # the main thread is str(proc.pid)
        while proc.poll() is None:
            task = Path(f"/proc/{proc.pid}/task")
            for tid in os.listdir(task) if task.exists() else []:
                try:
                    fields = (task / tid / "stat").read_text().rsplit(")", 1)[1].split()
                except (OSError, IndexError):
                    continue
                seen[tid] = (int(fields[11]) + int(fields[12])) / ticks
            time.sleep(0.02)
        main = seen.pop(str(proc.pid), 0.0)
        return [main, *sorted(seen.values(), reverse=True)]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


def _get(port: int, url: str) -> tuple[int, int]:
    import http.client

    from registry_client.sigv4 import host_header

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", url, headers={"Host": host_header(url), "Range": "bytes=0-1048575"})
        resp = conn.getresponse()
        return resp.status, len(resp.read())
    finally:
        conn.close()


def signatures(bench: Bench, cache: Any) -> dict[str, Any]:
    from registry_client.sigv4 import Credentials, presign_url

    creds = Credentials(bench.swift.access_key, bench.swift.secret_key)
    base = f"{bench.store.url}/{bench.bucket}/lab/app%3A1.sif"
    now = int(time.time())
    good = presign_url(base, creds, "us-east-1", signed_at=now - 60, expires=3600)
    urls = {
        "valid": good,
        "tampered": good[:-4] + ("0000" if not good.endswith("0000") else "1111"),
        "expired": presign_url(base, creds, "us-east-1", signed_at=now - 7200, expires=3600),
        "wrong key": presign_url(
            base,
            Credentials(bench.swift.access_key, "wrong"),
            "us-east-1",
            signed_at=now,
            expires=60,
        ),
    }
    out = {}
    for what, url in urls.items():
        status, n = _get(cache.port, url)
        out[what] = {"status": status, "body_bytes": n}
    return out


def clear_of_window_boundary() -> None:
    """Every figure starts with 5 minutes of its signing window left (helpers)."""
    from tests.support.helpers import clear_of_window_boundary as wait

    if waited := wait(margin=300):
        log(f"waited {waited:.0f} s for the next signing window")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.support.servers.nginx_cache import flip_byte

    work = Path(tempfile.mkdtemp(prefix="fleet-", dir=args.out))
    bench = Bench(work, args.nodes, args.size)
    n = args.nodes
    out: dict[str, Any] = {
        "nodes": n,
        "image": size_label(args.size),
        "image_bytes": bench.size,
        "cpus": os.cpu_count(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    log("SigV4 signer against botocore's presigner")
    out["signer"] = signer.measure()
    try:
        bench.push()
        log(f"direct: {n} nodes")
        out["direct"] = bench.herd([bench.config("direct")] * n, bench.swift.pids)

        clear_of_window_boundary()
        site = bench.nginx(bench.store.url)
        via_site = bench.config("site", cache_proxies=[site.url])
        log(f"site cache, cold: {n} nodes")
        out["site_cold"] = bench.herd([via_site] * n, [site.children[0].pid])
        log(f"site cache, warm: {n} nodes")
        out["site_warm"] = bench.herd([via_site] * n, [site.children[0].pid])
        log("threads of one node through the warm cache")
        out["threads_one_node"] = [round(t, 3) for t in bench.threads(via_site)[:7]]
        out["startup_cpu_s"] = round(bench.startup_cpu(via_site), 3)
        out["signatures"] = signatures(bench, site)

        log(f"flipped byte: fill, flip, {n} nodes, one more")
        clear_of_window_boundary()
        healing = bench.nginx(bench.store.url)
        via_healing = bench.config("healing", cache_proxies=[healing.url], fallback_spread=2)
        fill = bench.herd([via_healing])
        slices = healing.slice_files()
        flip_byte(slices[len(slices) // 2])
        flipped = bench.herd([via_healing] * n)
        later = bench.herd([via_healing])
        out["flipped"] = {
            **flipped,
            "store_copies_with_fill": round(fill["store_copies"] + flipped["store_copies"], 4),
            "later_node": later,
        }

        log(f"caches down: {n} nodes")
        hung = socket.socket()
        hung.bind(("127.0.0.1", 0))
        hung.listen(256)
        refused = socket.socket()
        refused.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        timeouts = {"connect_timeout": 2, "read_timeout": 3, "fallback_spread": 5}
        down = bench.config(
            "down",
            cache_proxies=[
                f"http://127.0.0.1:{refused.getsockname()[1]}",
                f"http://127.0.0.1:{hung.getsockname()[1]}",
            ],
            **timeouts,
        )
        out["down"] = {**bench.herd([down] * n), "settings": timeouts}
        hung.close()
        refused.close()

        log(f"2 racks under a site cache: {n} nodes")
        clear_of_window_boundary()
        top = bench.nginx(bench.store.url)
        racks = [bench.nginx(top.url, authz=bench.store.url) for _ in range(2)]
        configs = [
            bench.config(f"rack{i}", cache_proxies=[rack.url, top.url])
            for i, rack in enumerate(racks)
        ]
        out["racks"] = {
            **bench.herd([configs[i % 2] for i in range(n)], [top.children[0].pid]),
            "rack_slices": [len(rack.slice_files()) for rack in racks],
            "site_slices": len(top.slice_files()),
        }
    finally:
        bench.close()
        shutil.rmtree(work, ignore_errors=True)
    out["rates"] = rates(out, bench.size)
    out["model"] = model(out["rates"])
    return out


def rates(out: dict[str, Any], size: int) -> dict[str, float]:
    """CPU seconds per GB, from the runs above."""
    gb = size / GB
    n = out["nodes"]
    warm = out["site_warm"]
    return {
        "cache_cpu_per_gb": round(warm["watched_cpu_s"] / (n * gb), 3),
        "cache_cold_cpu_per_gb": round(out["site_cold"]["watched_cpu_s"] / (n * gb), 3),
        # a node's CPU beyond what a cache hit costs it (start-up), per GB
        "node_cpu_per_gb": round((warm["node_cpu_s"] / n - out["startup_cpu_s"]) / gb, 3),
        # the busiest thread other than the main one (which starts up, then waits)
        "node_busiest_per_gb": round(max(out["threads_one_node"][1:], default=0.0) / gb, 3),
        "store_cpu_per_gb": round(
            out["direct"]["watched_cpu_s"] / (out["direct"]["store_copies"] * gb), 3
        ),
        "loopback_serving_gb_per_s": round(n * gb / warm["wall_s"], 3),
    }


def model(measured: dict[str, float]) -> dict[str, Any]:
    rates_ = Rates(
        measured["cache_cpu_per_gb"],
        measured["node_cpu_per_gb"],
        measured["node_busiest_per_gb"],
        measured["store_cpu_per_gb"],
    )
    hw = Hardware()
    size = 10 * 10**9
    rows = [
        simulate("direct", 1000, size, rates_, hw),
        simulate("site", 1000, size, rates_, hw),
        simulate("racks", 1000, size, rates_, hw, racks=25),
        simulate("racks", 1000, size, rates_, hw, racks=25, racks_down=1),
    ]
    cpu = measured["cache_cpu_per_gb"]
    engines = (Engine("nginx, this run", (cpu, cpu)), *ENGINES)
    return {
        "hardware": hw.describe(),
        "rows": [r.to_dict() for r in rows],
        "engines": fleet_sim.engine_rows(rates_, hw, engines=engines),
        "engines_spread_60s": fleet_sim.engine_rows(rates_, hw, spread=60, engines=engines),
    }


def render(out: dict[str, Any]) -> str:
    n, label = out["nodes"], out["image"]
    lines = [
        f"# Fleet benchmark: {n} nodes x {label} ({out['cpus']} CPUs, {out['started']})",
        "",
        "| run | store copies | verified | wall s (last node) | nodes' CPU s | nginx/Swift CPU s |",
        "|---|---|---|---|---|---|",
    ]
    for name, key in (
        ("direct, no cache", "direct"),
        ("site cache, cold", "site_cold"),
        ("site cache, warm", "site_warm"),
        ("flipped byte in the cache", "flipped"),
        ("every cache down", "down"),
    ):
        r = out[key]
        watched = "-" if r["watched_cpu_s"] is None else r["watched_cpu_s"]
        lines.append(
            f"| {name} | {r['store_copies']:.3f} | {r['verified']}/{r['nodes']} | {r['wall_s']} "
            f"| {r['node_cpu_s']} | {watched} |"
        )
    racks = out["racks"]
    lines.append(
        f"| 2 racks under a site cache | {racks['store_copies']:.3f} | {racks['verified']}/{n} "
        f"| {racks['wall_s']} | {racks['node_cpu_s']} | {racks['watched_cpu_s']} (site) |"
    )
    flipped = out["flipped"]
    lines += [
        "",
        f"Flipped byte: {flipped['refreshed']} of {n} nodes failed verification and refreshed; "
        f"the store served {flipped['store_copies_with_fill']:.3f} copies including the fill; "
        f"a later node refreshed: {bool(flipped['later_node']['refreshed'])}, "
        f"store copies for it {flipped['later_node']['store_copies']:.3f}.",
        f"Caches down ({out['down']['settings']}): {out['down']['fell_back']} of {n} nodes fell "
        f"back, last node after {out['down']['wall_s']} s.",
        "Signatures through the cache: "
        + ", ".join(
            f"{k} {v['status']} ({v['body_bytes']} bytes)" for k, v in out["signatures"].items()
        )
        + ".",
        f"Threads of one node through the warm cache, CPU s (main first): "
        f"{out['threads_one_node']}; a cache hit costs {out['startup_cpu_s']} CPU s.",
        "",
        "Rates measured (CPU s per GB): " + ", ".join(f"{k} {v}" for k, v in out["rates"].items()),
        "",
        f"Model, 1,000 nodes x 10 GB ({out['model']['hardware']}):",
        "",
        "| topology | store | site cache | each rack cache | last node | bottleneck |",
        "|---|---|---|---|---|---|",
    ]
    for row in out["model"]["rows"]:
        name = row["topology"] + (f" x{row['racks']}" if row["racks"] else "")
        name += f", {row['racks_down']} down" if row.get("racks_down") else ""
        tb = [row[k] / 1e12 for k in ("store_bytes", "site_cache_bytes", "rack_cache_bytes")]
        lines.append(
            f"| {name} | {tb[0]:.2f} TB | {tb[1]:.2f} TB | {tb[2]:.2f} TB "
            f"| {row['seconds']:.0f} s | {row['bottleneck']} |"
        )
    lines += [
        "",
        "Simulated tick by tick (tests/benchmarks/fleet_sim.py), every node at once, then "
        "arriving over 60 s:",
        "",
        fleet_sim.render(out["model"]["engines"]),
        "",
        fleet_sim.render(out["model"]["engines_spread_60s"]),
        "",
        signer.render(out["signer"]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench fleet", description=__doc__)
    p.add_argument("--nodes", type=int, default=16)
    p.add_argument("--size", default="256M")
    p.add_argument("--out", default="bench-results/fleet")
    args = p.parse_args(argv)
    args.size = parse_size(args.size)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    out = run(args)
    (Path(args.out) / "fleet.json").write_text(json.dumps(out, indent=1))
    text = render(out)
    (Path(args.out) / "fleet.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
