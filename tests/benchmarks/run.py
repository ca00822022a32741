"""Benchmark registry-client against the tools users would pick instead, on loopback servers.

    bash scripts/bench [--quick | --full] [--sizes 256M,1G] [--repeats 3] [--only pull,warm]

Starts Swift all-in-one (native Swift + S3 via s3api) and moto (and, for the cloud figure,
Azurite and fake-gcs-server), generates SIF images in a
temp dir under --out (same disk as the caches), installs the peers into a venv outside the
repository (awscli, s5cmd, python-swiftclient, sregistry, matplotlib; rclone from Debian),
then measures, interleaved repeat by repeat: push, cold pull, warm pull, herds, peak RSS and
CPU per GiB. Prints tables; writes OUT/results.json, OUT/results.md and OUT/chart.png.
Every figure is a ratio to a peer or a limit measured in the same run; nothing is asserted.
Not collected by pytest. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.benchmarks import report
from tests.benchmarks.clouds import cloud_figure
from tests.benchmarks.figures import (
    Bench,
    herd_figure,
    pull_figure,
    push_figure,
    warm_figure,
    warmcache_figure,
)
from tests.benchmarks.measure import checked, hash_floor, run_timed
from tests.benchmarks.migration import migration_figures
from tests.benchmarks.tools import Tools, ensure_tools, tool_version
from tests.benchmarks.world import (
    Image,
    World,
    make_images,
    make_warm_list,
    parse_size,
    size_label,
    start_targets,
)

TARGETS = ["swift-s3api", "moto", "swift"]
FIGURES = ["push", "pull", "warm", "warmcache", "herd", "floor", "cloud", "migrate"]
MODES = {  # sizes, repeats, warm repeats, herd repeats, herd image, herd Ns, moto cap, cloud
    "quick": ("64M,256M", 2, 10, 1, "32M", "8,32", "64M", "64M"),
    "default": ("256M,1G", 3, 15, 2, "128M", "8,32", "256M", "256M"),
    "full": ("256M,1G,4G", 3, 20, 2, "256M", "8,32", "256M", "256M"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smoke test (~4 min)")
    mode.add_argument("--full", action="store_true", help="adds 4 GiB images (~40 min)")
    p.add_argument("--sizes", help="image sizes for push/pull/RSS, e.g. 256M,1G,4G")
    p.add_argument("--repeats", type=int, help="repeats of each push/pull measurement")
    p.add_argument("--warm-repeats", type=int, help="repeats of the cache-hit timings (>=10)")
    p.add_argument("--herd-repeats", type=int)
    p.add_argument(
        "--warmcache",
        default="8x32M",
        help="images of the `cache warm` figure, COUNTxSIZE (default 8x32M)",
    )
    p.add_argument("--herd-size", help="image size for the herds")
    p.add_argument("--herd-n", help="herd sizes, e.g. 8,32")
    p.add_argument(
        "--moto-max-size",
        help="largest image timed on moto (it copies the "
        "whole object for every ranged GET, so time grows with size squared)",
    )
    p.add_argument(
        "--cloud-size",
        help="image size of the cloud-emulator figure (Azurite, fake-gcs-server), "
        "which needs about six times that in memory while it is uploaded",
    )
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--only", default=",".join(FIGURES), help="figures to run")
    p.add_argument(
        "--transfer",
        action="append",
        default=[],
        metavar="KEY=BYTES",
        help="[transfer] setting for registry-client (chunk_size, concurrency, "
        "part_size, push_concurrency); repeatable",
    )
    p.add_argument(
        "--peers",
        help="first words of the peers to run beside us, e.g. "
        "s5cmd,curl (default: all; 'none' for ours alone)",
    )
    p.add_argument(
        "--rc-cmd",
        help="command to run as registry-client (default: the "
        "installed console script), e.g. a wrapper around a patched checkout",
    )
    p.add_argument(
        "--baseline-cmd",
        help="another build of registry-client to time beside "
        "ours in push and pull (e.g. a wrapper around a checkout of main), to "
        "measure a change's effect in one run",
    )
    p.add_argument("--out", default="bench-results")
    p.add_argument("--tools-venv", type=Path, help="where the peers are installed")
    p.add_argument("--no-install", action="store_true", help="use only peers already there")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also py-spy one cold pull of the largest image (swift-s3api)",
    )
    args = p.parse_args(argv)
    name = "quick" if args.quick else "full" if args.full else "default"
    sizes, repeats, warm, herd_rep, herd_size, herd_n, moto_cap, cloud = MODES[name]
    args.mode = name
    args.sizes = [parse_size(s) for s in (args.sizes or sizes).split(",")]
    args.repeats = args.repeats or repeats
    args.warm_repeats = args.warm_repeats or warm
    args.herd_repeats = args.herd_repeats or herd_rep
    args.herd_size = parse_size(args.herd_size or herd_size)
    args.herd_n = [int(n) for n in (args.herd_n or herd_n).split(",")]
    args.moto_max_size = parse_size(args.moto_max_size or moto_cap)
    args.cloud_size = parse_size(args.cloud_size or cloud)
    count, _, size = args.warmcache.partition("x")
    args.warmcache = (int(count), parse_size(size))
    args.targets = [t for t in args.targets.split(",") if t]
    args.only = set(args.only.split(","))
    args.peers = None if args.peers is None else set(args.peers.split(","))
    args.transfer = {k: int(v) for k, v in (item.split("=", 1) for item in args.transfer)}
    return args


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def sizes_for(args: argparse.Namespace, target: str) -> list[int]:
    if target == "moto":
        return [s for s in args.sizes if s <= args.moto_max_size] or [min(args.sizes)]
    return args.sizes


def run_target(bench: Bench, args: argparse.Namespace, name: str, results: dict[str, Any]) -> None:
    world = bench.world
    target = world.targets[name]
    for size in sizes_for(args, name):
        image = world.images[size]
        if "push" in args.only:
            log(f"{name}: push {image.label}")
            results["push"].append(push_figure(bench, target, image))
        else:
            seed_push(bench, name, image)
        if "pull" in args.only:
            log(f"{name}: cold pull {image.label}")
            results["pull"].append(pull_figure(bench, target, image))
    if "warm" in args.only:
        small = world.images[min(sizes_for(args, name))]
        log(f"{name}: warm pulls of {small.label} x{bench.warm_repeats}")
        results["warm"].append(warm_figure(bench, target, small))
    if "warmcache" in args.only:
        for image in world.warm_list:
            seed_push(bench, name, image)
        log(f"{name}: cache warm of {len(world.warm_list)} x {world.warm_list[0].label}")
        results["warmcache"].append(warmcache_figure(bench, target, world.warm_list))
    if "herd" in args.only:
        herd = world.images[args.herd_size]
        seed_push(bench, name, herd)
        for n in args.herd_n:
            log(f"{name}: herd of {n} pulls of {herd.label}")
            results["herd"].append(herd_figure(bench, target, herd, n))


def seed_push(bench: Bench, name: str, image: Image) -> None:
    """Push an image (untimed) so the figures that read it find it."""
    world = bench.world
    target = world.targets[name]
    env = world.rc_env(target, bench.scratch("seed-cache"))
    sample = checked(
        run_timed([bench.rc, "push", str(image.path), image.ref], env), f"push {image.ref}"
    )
    image.sha256 = sample.stdout.strip().removeprefix("sha256:")


def profile_pull(bench: Bench, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """py-spy a cold pull: where the samples land, all threads and GIL holders only."""
    spy = bench.tools.get("py-spy")
    target = bench.world.targets.get("swift-s3api")
    if not spy or target is None:
        return {}
    image = bench.world.images[max(args.sizes)]
    found: dict[str, Any] = {}
    for mode, extra in (("threads", ["--threads"]), ("gil", ["--threads", "--gil"])):
        raw = out / f"profile-pull-{image.label}-{mode}.txt"
        cache = bench.scratch("profile-cache")
        cmd = [
            spy,
            "record",
            "-r",
            "250",
            "-f",
            "raw",
            "-o",
            str(raw),
            *extra,
            "--",
            bench.rc,
            "pull",
            image.ref,
        ]
        proc = subprocess.run(
            cmd,
            env=bench.world.rc_env(target, cache),
            capture_output=True,
            text=True,
            timeout=1800,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0 or not raw.exists():
            bench.note(f"py-spy failed: {proc.stderr.strip()[-300:]!r}")
            return found
        found[mode] = top_frames(raw)
    return found


def top_frames(raw: Path, rate: int = 250, limit: int = 14) -> list[tuple[str, str, float]]:
    """Seconds of samples by (thread pool, leaf frame) from py-spy's collapsed stacks."""
    counts: dict[tuple[str, str], int] = {}
    for line in raw.read_text().splitlines():
        stack, _, num = line.rpartition(" ")
        if not num.isdigit():
            continue
        frames = stack.split(";")
        thread = re.sub(r"_\d+$", "", re.sub(r"^thread \(\d+\): ", "", frames[0]))
        key = (thread[:40], frames[-1] if len(frames) > 1 else "(native or idle)")
        counts[key] = counts.get(key, 0) + int(num)
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    return [(th, leaf, round(n / rate, 2)) for (th, leaf), n in ranked]


def meta(args: argparse.Namespace, tools: Tools) -> dict[str, Any]:
    versions = {"registry-client": tool_version(tools.paths["registry-client"], "--version")}
    for exe, flag in (
        ("aws", "--version"),
        ("s5cmd", "version"),
        ("rclone", "version"),
        ("swift", "--version"),
        ("sregistry", "version"),
        ("curl", "--version"),
    ):
        if tools.get(exe):
            versions[exe] = tool_version(tools.paths[exe], flag)
    import boto3

    versions["boto3"] = boto3.__version__
    versions["git"] = git_state()
    return {
        "mode": args.mode,
        "sizes": [size_label(s) for s in args.sizes],
        "repeats": args.repeats,
        "warm_repeats": args.warm_repeats,
        "herd_repeats": args.herd_repeats,
        "herd_size": size_label(args.herd_size),
        "warmcache": f"{args.warmcache[0]}x{size_label(args.warmcache[1])}",
        "herd_n": args.herd_n,
        "moto_max_size": size_label(args.moto_max_size),
        "cloud_size": size_label(args.cloud_size),
        "transfer": args.transfer,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "versions": versions,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "title": f"registry-client benchmarks ({args.mode}: "
        f"{', '.join(size_label(s) for s in args.sizes)}, {os.cpu_count()} CPUs)",
    }


def git_state() -> str:
    """The commit measured, and whether the core code had uncommitted changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "registry_client", "backends"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return f"{head}{' + uncommitted core changes' if dirty else ''}"


def write_outputs(results: dict[str, Any], out: Path, tools: Tools) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    text = report.render(results)
    (out / "results.md").write_text(text + "\n")
    print(text, flush=True)
    if tools.has_matplotlib:
        chart = Path(__file__).with_name("chart.py")
        proc = subprocess.run(
            [tools.python, str(chart), str(out / "results.json"), str(out / "chart.png")],
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            log(f"chart failed: {proc.stderr.strip()[-400:]}")
        else:
            log(f"wrote {out / 'chart.png'}")


def compile_sources() -> None:
    """Byte-compile the package, as `pip install` does: the runs get
    PYTHONDONTWRITEBYTECODE=1 (nothing written into the tree), and an editable install
    would otherwise compile every module again at each start, which no peer pays."""
    import compileall

    root = Path(__file__).resolve().parents[2]
    for folder in ("registry_client", "backends"):
        compileall.compile_dir(str(root / folder), quiet=1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    log(
        f"mode {args.mode}: sizes {[size_label(s) for s in args.sizes]}, "
        f"repeats {args.repeats}; peers ..."
    )
    tools = ensure_tools(args.tools_venv, install=not args.no_install)
    for note in tools.notes:
        log(f"note: {note}")
    if args.rc_cmd:
        tools.paths["registry-client"] = args.rc_cmd
    if not tools.paths.get("registry-client") or not tools.paths.get("time"):
        log("need the installed registry-client console script and /usr/bin/time (GNU time)")
        return 2
    compile_sources()
    work = Path(tempfile.mkdtemp(prefix="work-", dir=out))
    world = World(work, transfer=args.transfer)
    bench = Bench(
        world,
        tools,
        args.repeats,
        args.warm_repeats,
        args.herd_repeats,
        notes=list(tools.notes),
        log=log,
        peers=args.peers,
        baseline_rc=args.baseline_cmd,
    )
    results: dict[str, Any] = {
        "meta": meta(args, tools),
        "push": [],
        "pull": [],
        "warm": [],
        "warmcache": [],
        "herd": [],
        "timings": {},
    }
    servers: list[Any] = []
    try:
        if "floor" in args.only:
            results["floor"] = hash_floor()
        log("images ...")
        wanted = {s for t in args.targets for s in sizes_for(args, t)}
        if "herd" in args.only:
            wanted.add(args.herd_size)
        if "cloud" in args.only:
            wanted.add(args.cloud_size)
        make_images(world, sorted(wanted))
        if "warmcache" in args.only:
            world.warm_list = make_warm_list(world, *args.warmcache)
        log("servers ...")
        servers = start_targets(world, args.targets)
        for name in args.targets:
            t0 = time.perf_counter()
            run_target(bench, args, name, results)
            results["timings"][name] = round(time.perf_counter() - t0, 1)
        if "cloud" in args.only:
            t0 = time.perf_counter()
            results["cloud"] = cloud_figure(bench, world.images[args.cloud_size])
            results["timings"]["cloud"] = round(time.perf_counter() - t0, 1)
        if "migrate" in args.only:
            t0 = time.perf_counter()
            results["migrate"] = migration_figures(bench, args.repeats)
            results["timings"]["migrate"] = round(time.perf_counter() - t0, 1)
        if args.profile:
            log("profiling a cold pull with py-spy")
            results["profile"] = profile_pull(bench, args, out)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["rss"] = report.rss_rows(results["push"], results["pull"])
    results["cpu"] = report.cpu_rows(results["pull"], results.get("floor", {}))
    results["timings"]["total"] = round(time.perf_counter() - started, 1)
    results["meta"]["git_at_end"] = git_state()
    if results["meta"]["git_at_end"] != results["meta"]["versions"]["git"]:
        bench.note(
            f"the code changed during the run: {results['meta']['versions']['git']} "
            f"at the start, {results['meta']['git_at_end']} at the end"
        )
    results["notes"] = bench.notes
    write_outputs(results, out, tools)
    log(f"done in {results['timings']['total']:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
