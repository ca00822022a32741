"""The figures: each runs registry-client and its peers side by side, interleaved."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.benchmarks import peers
from tests.benchmarks.measure import (
    Sample,
    checked,
    file_size,
    ratios,
    run_concurrently,
    run_timed,
    summary,
)
from tests.benchmarks.shared import MEMBER, shared_cache_cases
from tests.benchmarks.shared import TYPER as MEMBER_TYPER
from tests.benchmarks.tools import Tools
from tests.benchmarks.world import GiB, Image, Target, World, delete_object, object_url

OURS = "registry-client"
BASELINE = "registry-client (baseline)"  # another build of ours (--baseline-cmd), e.g. main


@dataclass
class Bench:
    world: World
    tools: Tools
    repeats: int
    warm_repeats: int
    herd_repeats: int
    notes: list[str] = field(default_factory=list)
    log: Callable[[str], None] = print
    broken: set[tuple[str, str]] = field(default_factory=set)  # (target, tool) that failed
    peers: set[str] | None = None  # first words of the peers to run (None: all)
    baseline_rc: str | None = None  # command of another build of ours to time beside us

    def wants(self, tool: str) -> bool:
        return self.peers is None or tool.split()[0] in self.peers

    @property
    def rc(self) -> str:
        return self.tools.paths["registry-client"]

    def builds(self) -> dict[str, str]:
        """Our command, and the baseline build's when there is one."""
        found = {OURS: self.rc}
        if self.baseline_rc:
            found[BASELINE] = self.baseline_rc
        return found

    def scratch(self, name: str) -> Path:
        path = self.world.work / "scratch" / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            self.log(f"  note: {text}")


def _rotate(items: list[Any], by: int) -> list[Any]:
    if not items:
        return items
    by %= len(items)
    return items[by:] + items[:by]


def _stats(samples: list[Sample]) -> dict[str, Any]:
    server = [s.server_cpu for s in samples if s.server_cpu is not None]
    return {
        "wall": summary([s.wall for s in samples]),
        "cpu": summary([s.cpu for s in samples]),
        "rss_mb": summary([s.rss_mb for s in samples]),
        "server_cpu": summary(server),
        "fs_in_mb": summary([s.fs_in_mb for s in samples]),
        "fs_out_mb": summary([s.fs_out_mb for s in samples]),
        "walls": [round(s.wall, 4) for s in samples],
    }


def _peer_ok(
    bench: Bench, target: Target, tool: str, sample: Sample, dest: Path | None, want: int
) -> bool:
    size = file_size(dest) if dest else want
    if sample.rc == 0 and size == want:
        return True
    bench.broken.add((target.name, tool))
    bench.note(
        f"{tool} on {target.name} failed (exit {sample.rc}, {size} of {want} bytes): "
        f"{sample.stderr[-300:]!r}; left out from then on"
    )
    return False


# -- push ------------------------------------------------------------------------------------


def push_figure(bench: Bench, target: Target, image: Image) -> dict[str, Any]:
    """Our push of the image's ref (the object the pull figures read) vs peers' uploads."""
    world, tools = bench.world, bench.tools
    want = image.path.stat().st_size
    env_rc = world.rc_env(target, bench.scratch("push-cache"))
    env_peer = world.peers_env(target)
    uploaders = {
        name: b
        for name, b in peers.UPLOADERS.items()
        if bench.wants(name) and b(tools, target, "k", image.path) is not None
    }
    builds = bench.builds()
    samples: dict[str, list[Sample]] = {**{n: [] for n in builds}, **{n: [] for n in uploaders}}
    for rep in range(bench.repeats):
        for tool in _rotate([*builds, *uploaders], rep):
            if (target.name, tool) in bench.broken:
                continue
            if tool in builds:
                sample = checked(
                    run_timed(
                        [builds[tool], "push", str(image.path), image.ref],
                        env_rc,
                        watch=target.server.pids,
                    ),
                    f"{tool}: push {image.ref} to {target.name}",
                )
                image.sha256 = sample.stdout.strip().removeprefix("sha256:")
            else:
                key = f"peers/{tool.split()[0]}-{image.label}.sif"
                cmd = uploaders[tool](tools, target, key, image.path)
                sample = run_timed(cmd or [], env_peer, watch=target.server.pids)
                ok = _peer_ok(bench, target, tool, sample, None, want)
                delete_object(target, key)
                if not ok:
                    continue
            samples[tool].append(sample)
    return _compare(target, image, samples, want, baseline=None)


# -- cold pull -------------------------------------------------------------------------------


def pull_figure(bench: Bench, target: Target, image: Image) -> dict[str, Any]:
    """Cold `registry-client pull` vs each peer's download, curl to /dev/null, and the disk."""
    world, tools = bench.world, bench.tools
    want = image.path.stat().st_size
    env_peer = world.peers_env(target)
    downloaders = {
        name: b
        for name, b in peers.DOWNLOADERS.items()
        if bench.wants(name) and b(tools, target, image.key, Path("x")) is not None
    }
    url, headers = object_url(target, image.key)
    extra = [
        n for n in ("curl", "write+fsync") if bench.wants(n) and (n != "curl" or tools.get("curl"))
    ]
    tools_run = [*bench.builds(), *downloaders, *extra]
    samples: dict[str, list[Sample]] = {n: [] for n in tools_run}
    for rep in range(bench.repeats):
        for tool in _rotate(tools_run, rep):
            if (target.name, tool) in bench.broken:
                continue
            sample = _pull_one(
                bench, target, image, tool, downloaders, env_peer, url, headers, want
            )
            if sample is not None:
                samples[tool].append(sample)
    return _compare(target, image, samples, want, baseline="curl")


def _pull_one(
    bench: Bench,
    target: Target,
    image: Image,
    tool: str,
    downloaders: dict[str, peers.Builder],
    env_peer: dict[str, str],
    url: str,
    headers: list[str],
    want: int,
) -> Sample | None:
    builds = bench.builds()
    if tool in builds:
        cache = bench.scratch("pull-cache")
        env = bench.world.rc_env(target, cache)
        sample = checked(
            run_timed(
                [builds[tool], "pull", image.ref], env, watch=target.server.pids, threads=True
            ),
            f"{tool}: pull {image.ref} from {target.name}",
        )
        if file_size(Path(sample.stdout)) != want:
            raise RuntimeError(f"pull {image.ref}: {sample.stdout} is not {want} bytes")
        shutil.rmtree(cache, ignore_errors=True)
        return sample
    if tool == "curl":
        sample = run_timed(
            peers.curl_get(bench.tools, url, headers) or [],
            bench.world.base_env(),
            watch=target.server.pids,
        )
        return sample if _peer_ok(bench, target, tool, sample, None, want) else None
    dest = bench.scratch("pull-peer") / "image.sif"
    if tool == "write+fsync":
        cmd = [
            "dd",
            "if=/dev/zero",
            f"of={dest}",
            "bs=16M",
            f"count={-(-want // (16 << 20))}",
            "conv=fsync",
            "status=none",
        ]
        sample = run_timed(cmd, bench.world.base_env())
        dest.unlink(missing_ok=True)
        return sample
    sample = run_timed(
        downloaders[tool](bench.tools, target, image.key, dest) or [],
        env_peer,
        watch=target.server.pids,
    )
    ok = _peer_ok(bench, target, tool, sample, dest, want)
    shutil.rmtree(dest.parent, ignore_errors=True)
    return sample if ok else None


def _compare(
    target: Target, image: Image, samples: dict[str, list[Sample]], want: int, baseline: str | None
) -> dict[str, Any]:
    ours = [s.wall for s in samples[OURS]]

    def median_wall(name: str) -> float:
        return summary([s.wall for s in samples[name]])["median"]

    others = [n for n in samples if n not in (OURS, BASELINE, "curl", "write+fsync") and samples[n]]
    fastest = min(
        (n for n in others if not n.endswith(peers.VERIFIED)), key=median_wall, default=None
    )
    checked_peer = min(
        (n for n in others if n.endswith(peers.VERIFIED)), key=median_wall, default=None
    )
    result: dict[str, Any] = {
        "target": target.name,
        "size": image.size,
        "label": image.label,
        "bytes": want,
        "tools": {n: _stats(s) for n, s in samples.items() if s},
        "fastest_peer": fastest,
        "ratio_vs_fastest_peer": ratios(ours, [s.wall for s in samples[fastest]])
        if fastest
        else None,
        "ours_MBps": summary([want / 1e6 / w for w in ours]),
    }
    if checked_peer:
        result["verified_peer"] = checked_peer
        result["ratio_vs_verified_peer"] = ratios(ours, [s.wall for s in samples[checked_peer]])
    if samples.get(BASELINE):
        result["ratio_vs_baseline_build"] = ratios(ours, [s.wall for s in samples[BASELINE]])
    if baseline and samples.get(baseline):
        # our throughput / curl's throughput = curl time / our time
        result["throughput_vs_curl"] = ratios([s.wall for s in samples[baseline]], ours)
        result["curl_MBps"] = summary([want / 1e6 / s.wall for s in samples[baseline]])
    boto3 = samples.get("boto3 download_file")
    if boto3:
        result["ratio_vs_boto3"] = ratios(ours, [s.wall for s in boto3])
    gib = want / GiB
    result["threads_s_per_gib"] = {
        n: thread_breakdown(v, gib) for n, v in samples.items() if v and v[0].threads
    }
    result["cpu_s_per_gib"] = {
        n: summary([s.cpu / gib for s in v])
        for n, v in samples.items()
        if v and n not in ("write+fsync",)
    }
    result["server_cpu_s_per_gib"] = {
        n: summary([s.server_cpu / gib for s in v if s.server_cpu is not None])
        for n, v in samples.items()
        if v and n not in ("write+fsync",)
    }
    return result


def thread_breakdown(samples: list[Sample], gib: float) -> dict[str, Any]:
    """CPU s/GiB of a pull's threads over the repeats: the busiest one (and its name), the
    sha256 follower, the busiest range worker, all range workers, everything else."""
    rows: dict[str, list[float]] = {}
    names: list[str] = []
    for sample in samples:
        threads = sample.threads or [["?", 0.0]]
        workers = [cpu for name, cpu in threads if name.startswith("rc-get")]
        sha = sum(cpu for name, cpu in threads if name == "rc-sha256")
        total = sum(cpu for _, cpu in threads)
        names.append(str(threads[0][0]))
        for key, value in (
            ("busiest", threads[0][1]),
            ("sha256", sha),
            ("busiest_worker", max(workers, default=0.0)),
            ("workers", sum(workers)),
            ("other", total - sha - sum(workers)),
            ("total", total),
        ):
            rows.setdefault(key, []).append(value / gib)
    out: dict[str, Any] = {k: summary(v) for k, v in rows.items()}
    out["busiest_name"] = max(set(names), key=names.count)
    return out


# -- warm pull -------------------------------------------------------------------------------


def warm_figure(bench: Bench, target: Target, image: Image) -> dict[str, Any]:
    """Cache hits: by tag (one HEAD), by pinned digest and --offline (no network), from the
    runner's private cache and, as a second user, from a group-shared cache where root
    published the image (tests/benchmarks/shared.py); each against its own user's
    `import typer`."""
    world = bench.world
    cache = bench.scratch(f"warm-cache-{target.name}")
    env = world.rc_env(target, cache)
    first = checked(run_timed([bench.rc, "pull", image.ref], env), "warm-up pull")
    sha = image.sha256 or Path(first.stdout).name.split(".")[0]
    python = sys.executable
    hits = _hits(image.ref, sha)
    cases = {
        TYPER: ([python, "-c", "import typer"], world.base_env()),
        "python -c pass": ([python, "-c", "pass"], world.base_env()),
        **{name: ([bench.rc, "pull", *args], env) for name, args in hits.items()},
    }
    with shared_cache_cases(world, bench.rc, target, image, hits) as (member, why):
        if why:
            bench.note(why)
        cases.update(member)
        samples: dict[str, list[Sample]] = {n: [] for n in cases}
        for rep in range(bench.warm_repeats):
            for name in _rotate(list(cases), rep):
                cmd, cmd_env = cases[name]
                samples[name].append(checked(run_timed(cmd, cmd_env), name))
    out: dict[str, Any] = {
        "target": target.name,
        "label": image.label,
        "tools": {n: _stats(s) for n, s in samples.items()},
        "ratio": _warm_ratios(samples, "", TYPER),
    }
    if member:
        out["shared"] = _warm_ratios(samples, f"{MEMBER} ", MEMBER_TYPER)
    shutil.rmtree(cache, ignore_errors=True)
    return out


TYPER = "python -c 'import typer'"


def _hits(ref: str, sha: str) -> dict[str, list[str]]:
    """The three cache hits timed, by case name: `pull` arguments."""
    return {
        "by tag (HEAD)": [ref],
        "by digest": [f"{ref}@sha256:{sha}"],
        "--offline": ["--offline", ref],
    }


def _warm_ratios(samples: dict[str, list[Sample]], prefix: str, base: str) -> dict[str, Any]:
    """Each hit's wall / its user's `import typer`, repeat by repeat."""
    walls = [s.wall for s in samples[base]]
    return {name: ratios([s.wall for s in samples[prefix + name]], walls) for name in _hits("", "")}


# -- cache warm ------------------------------------------------------------------------------


WARM_JOBS = (1, 4)
REWARM = "re-warm (all cached)"


def warmcache_figure(bench: Bench, target: Target, images: list[Image]) -> dict[str, Any]:
    """`cache warm LIST` of K images into an empty cache with --jobs 1 and --jobs 4
    (interleaved; ratio 4 / 1), then the same list over the warm cache beside
    `import typer` (what a prolog pays on a node that already holds everything)."""
    world = bench.world
    listing = world.work / f"warm-list-{target.name}.txt"
    listing.write_text("".join(f"{image.ref}\n" for image in images))
    jobs = {f"--jobs {n}": n for n in WARM_JOBS}
    rewarms = {REWARM: bench.rc}
    if bench.baseline_rc:  # the same re-warm by another build (--baseline-cmd)
        rewarms[f"{REWARM}, baseline build"] = bench.baseline_rc
    samples: dict[str, list[Sample]] = {n: [] for n in [*jobs, *rewarms, TYPER]}
    for rep in range(bench.repeats):
        for name in _rotate(list(jobs), rep):
            cache = bench.scratch("warmcache")
            env = world.rc_env(target, cache)
            cmd = [bench.rc, "--json", "cache", "warm", str(listing), "--jobs", str(jobs[name])]
            sample = run_timed(cmd, env, watch=target.server.pids, threads=True)
            samples[name].append(_warmed(sample, name, downloaded=len(images)))
        for name in _rotate([*rewarms, TYPER], rep):
            if name == TYPER:
                sample = run_timed([sys.executable, "-c", "import typer"], world.base_env())
                samples[name].append(checked(sample, name))
            else:
                rewarm = [rewarms[name], "--json", "cache", "warm", str(listing)]
                sample = run_timed(rewarm, env, watch=target.server.pids)
                samples[name].append(_warmed(sample, name, cached=len(images)))
        shutil.rmtree(cache, ignore_errors=True)
    walls = {n: [s.wall for s in v] for n, v in samples.items()}
    out: dict[str, Any] = {
        "target": target.name,
        "images": len(images),
        "label": images[0].label,
        "tools": {n: _stats(s) for n, s in samples.items()},
        "busiest_thread_s": {
            n: summary([s.threads[0][1] for s in samples[n] if s.threads]) for n in jobs
        },
        "busiest_thread_name": {
            n: str(samples[n][0].threads[0][0]) if samples[n][0].threads else "?" for n in jobs
        },
        "jobs_ratio": ratios(walls["--jobs 4"], walls["--jobs 1"]),
        "rewarm_ratio": ratios(walls[REWARM], walls[TYPER]),
    }
    for name in rewarms.keys() - {REWARM}:
        out["rewarm_vs_baseline_build"] = ratios(walls[REWARM], walls[name])
    return out


def _warmed(sample: Sample, what: str, downloaded: int = 0, cached: int = 0) -> Sample:
    """The warm's own JSON report: every image downloaded (or found cached), none failed."""
    checked(sample, f"cache warm ({what})")
    report = json.loads(sample.stdout)
    got = (report["downloaded"], report["cached"], report["failed"])
    if got != (downloaded, cached, 0):
        raise RuntimeError(f"cache warm ({what}): downloaded, cached, failed = {got}")
    return sample


# -- herd ------------------------------------------------------------------------------------


def herd_figure(bench: Bench, target: Target, image: Image, n: int) -> dict[str, Any]:
    """N concurrent cold pulls through a counting proxy, with naive peers beside us."""
    from tests.support.faultproxy import FaultProxy

    want = image.path.stat().st_size
    rows: dict[str, dict[str, list[float]]] = {}
    for _ in range(bench.herd_repeats):
        with FaultProxy(target.server.s3_endpoint, idle_timeout=120) as proxy:
            _herd_ours(bench, target, image, n, proxy, rows)
            _herd_baseline(bench, target, image, n, proxy, rows)
            _herd_naive(bench, target, image, n, proxy, rows)
            _herd_sregistry(bench, target, image, n, proxy, rows)
    out: dict[str, Any] = {
        "target": target.name,
        "n": n,
        "label": image.label,
        "bytes": want,
        "tools": {},
    }
    for tool, data in rows.items():
        out["tools"][tool] = {k: summary(v) for k, v in data.items()}
        if "bytes" in data:
            out["tools"][tool]["bytes_ratio"] = summary([b / want for b in data["bytes"]])
    ours, base = rows.get(OURS, {}), rows.get("baseline", {})
    if ours.get("wall") and base.get("wall"):
        out["wall_ratio"] = ratios(ours["wall"], base["wall"])
    return out


def _add(rows: dict[str, dict[str, list[float]]], tool: str, **values: float) -> None:
    for key, value in values.items():
        rows.setdefault(tool, {}).setdefault(key, []).append(value)


def _herd_ours(
    bench: Bench,
    target: Target,
    image: Image,
    n: int,
    proxy: Any,
    rows: dict[str, dict[str, list[float]]],
) -> None:
    cache = bench.scratch("herd-cache")
    env = bench.world.rc_env(target, cache, endpoint=proxy.url, tag="-proxy")
    proxy.reset_stats()
    wall, codes, outs = run_concurrently([[bench.rc, "pull", image.ref]] * n, env)
    failed = sum(c != 0 for c in codes)
    paths = {o for o, c in zip(outs, codes, strict=True) if c == 0}
    if failed or len(paths) != 1:
        bench.note(f"herd {n} on {target.name}: {failed} pulls failed, {len(paths)} paths")
    _add(rows, OURS, wall=wall, bytes=proxy.stats.get_bytes, failed=failed)
    shutil.rmtree(cache, ignore_errors=True)


def _herd_baseline(
    bench: Bench,
    target: Target,
    image: Image,
    n: int,
    proxy: Any,
    rows: dict[str, dict[str, list[float]]],
) -> None:
    """One cold pull alone, then N warm pulls at once: the unavoidable cost. The warm
    pulls go through the full client (`--verbose` steps past the console script's light
    HEAD), as every member of a herd must: each starts before the image is cached, so
    its light HEAD misses and the full client runs and waits for the one download."""
    cache = bench.scratch("herd-cache")
    env = bench.world.rc_env(target, cache, endpoint=proxy.url, tag="-proxy")
    cold = checked(run_timed([bench.rc, "pull", image.ref], env), "herd baseline cold pull")
    full_client = [bench.rc, "--verbose", "pull", image.ref]
    warm, codes, _ = run_concurrently([full_client] * n, env)
    if any(codes):
        bench.note(f"herd baseline on {target.name}: warm pulls failed {codes}")
    _add(rows, "baseline", wall=cold.wall + warm, cold=cold.wall, warm=warm)
    shutil.rmtree(cache, ignore_errors=True)


NAIVE = {"s3": "aws s3 cp to one path", "swift": "swift download to one path"}


def _herd_naive(
    bench: Bench,
    target: Target,
    image: Image,
    n: int,
    proxy: Any,
    rows: dict[str, dict[str, list[float]]],
) -> None:
    """The naive job script: every job runs `aws s3 cp s3://... $CACHE/app.sif` (or
    `swift download ... -o $CACHE/app.sif`): N downloads to one final path."""
    dest = bench.scratch("herd-naive") / "app.sif"
    tool = NAIVE[target.kind]
    build = peers.aws_get if target.kind == "s3" else peers.swift_get
    cmd = build(bench.tools, target, image.key, dest)
    if not cmd or not bench.wants(tool):
        return
    proxy.reset_stats()
    wall, codes, _ = run_concurrently([cmd] * n, bench.world.peers_env(target, proxy.url))
    _add(rows, tool, wall=wall, bytes=proxy.stats.get_bytes, failed=sum(c != 0 for c in codes))
    shutil.rmtree(dest.parent, ignore_errors=True)


def _herd_sregistry(
    bench: Bench,
    target: Target,
    image: Image,
    n: int,
    proxy: Any,
    rows: dict[str, dict[str, list[float]]],
) -> None:
    cmd = peers.sregistry_pull(bench.tools, target, image.ref)
    if not cmd or not bench.wants("sregistry") or (target.name, "sregistry") in bench.broken:
        return
    root = bench.scratch("herd-sregistry")
    (root / "storage").mkdir()
    env = {
        **bench.world.peers_env(target, proxy.url),
        **peers.sregistry_env(target, proxy.url, root),
    }
    proxy.reset_stats()
    errors: list[str] = []
    wall, codes, _ = run_concurrently([cmd] * n, env, cwd=root, errors=errors)
    failed = sum(c != 0 for c in codes)
    if errors:
        bench.note(f"sregistry pull: {failed} of {n} failed on {target.name}, e.g. {errors[0]!r}")
    if failed == n:
        bench.broken.add((target.name, "sregistry"))
        probe = subprocess.run(
            cmd,
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
        bench.note(f"sregistry pull on {target.name} failed: {probe.stderr.strip()[-300:]!r}")
        return
    _add(rows, "sregistry pull", wall=wall, bytes=proxy.stats.get_bytes, failed=failed)
    shutil.rmtree(root, ignore_errors=True)
