"""Tables for the terminal (and docs/performance.md) from the results dict."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from tests.benchmarks.measure import slope, summary
from tests.benchmarks.world import GiB

HERD_SLACK = 0.001  # metadata bytes (a Swift SLO manifest GET is ~1 KB) are not a second copy
GOALS = {
    "pull": 1.0,
    "push": 1.0,
    "warm": 1.5,
    "warm_tag": 2.0,
    "busiest_thread": 0.8,
    "vs_boto3": 1.3,
    "herd_bytes": 1.0,
    "herd_wall": 1.2,
    "rss_mb": 150.0,
}


def _f(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _mmm(stat: dict[str, float] | None, digits: int = 2, scale: float = 1.0) -> str:
    """median [min–max]"""
    if not stat or not stat.get("n"):
        return "-"
    return (
        f"{_f(stat['median'] * scale, digits)} "
        f"[{_f(stat['min'] * scale, digits)}–{_f(stat['max'] * scale, digits)}]"
    )


def table(headers: list[str], rows: Iterable[list[str]]) -> str:
    """A GitHub-flavoured markdown table (also readable in a terminal)."""
    rows = [list(map(str, r)) for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def _verdict(value: float | None, goal: float) -> str:
    if value is None or math.isnan(value):
        return "-"
    return "met" if value <= goal else "MISSED"


def transfer_table(results: list[dict[str, Any]], what: str) -> str:
    headers = ["target", "size", "ours s", "fastest peer", "peer s", "ours/fastest", "goal ≤1.0"]
    if what == "pull":
        headers += ["curl s", "ours/curl throughput", "write+fsync s"]
    with_verified = any(res.get("ratio_vs_verified_peer") for res in results)
    if with_verified:
        headers += ["fastest peer + sha256sum", "ours/that"]
    with_boto3 = what == "pull" and any(res.get("ratio_vs_boto3") for res in results)
    if with_boto3:
        headers += ["ours/boto3 download_file", "goal ≤1.3"]
    with_baseline = any(res.get("ratio_vs_baseline_build") for res in results)
    if with_baseline:
        headers += ["ours/baseline build"]
    rows = []
    for res in results:
        tools, fastest = res["tools"], res.get("fastest_peer")
        ratio = res.get("ratio_vs_fastest_peer") or {}
        row = [
            res["target"],
            res["label"],
            _mmm(tools["registry-client"]["wall"]),
            fastest or "-",
            _mmm(tools.get(fastest, {}).get("wall")),
            _mmm(ratio),
            _verdict(ratio.get("median"), GOALS[what]),
        ]
        if what == "pull":
            row += [
                _mmm(tools.get("curl", {}).get("wall")),
                _mmm(res.get("throughput_vs_curl")),
                _mmm(tools.get("write+fsync", {}).get("wall")),
            ]
        if with_verified:
            row += [res.get("verified_peer") or "-", _mmm(res.get("ratio_vs_verified_peer"))]
        if with_boto3:
            boto3 = res.get("ratio_vs_boto3") or {}
            row += [_mmm(boto3), _verdict(boto3.get("median"), GOALS["vs_boto3"]) if boto3 else "-"]
        if with_baseline:
            row.append(_mmm(res.get("ratio_vs_baseline_build")))
        rows.append(row)
    return table(headers, rows)


def peers_table(results: list[dict[str, Any]]) -> str:
    """Every tool's median wall time (s) per target and size."""
    names: list[str] = []
    for res in results:
        names += [n for n in res["tools"] if n not in names]
    rows = [
        [
            res["target"],
            res["label"],
            *(_f(res["tools"].get(n, {}).get("wall", {}).get("median")) for n in names),
        ]
        for res in results
    ]
    return table(["target", "size", *names], rows)


def warm_table(results: list[dict[str, Any]]) -> str:
    """The private-cache rows, then (where timed) the same hits as a member of a shared
    cache that root filled, against that member's own `import typer`."""
    rows = []
    for res in results:
        tools = res["tools"]
        bare = tools["python -c pass"]["wall"]
        groups = [("", res["ratio"], tools["python -c 'import typer'"]["wall"])]
        if res.get("shared"):
            prefix = "shared, member: "
            groups.append(
                (prefix, res["shared"], tools[prefix + "python -c 'import typer'"]["wall"])
            )
        for prefix, by_case, base in groups:
            for case, ratio in by_case.items():
                goal = GOALS["warm"] if case != "by tag (HEAD)" else GOALS["warm_tag"]
                rows.append(
                    [
                        res["target"],
                        prefix + case,
                        _mmm(tools[prefix + case]["wall"], 0, 1000),
                        _mmm(base, 0, 1000),
                        _mmm(bare, 0, 1000),
                        _mmm(ratio),
                        f"≤{goal:g}: {_verdict(ratio.get('median'), goal)}",
                    ]
                )
    return table(
        [
            "target",
            "case",
            "ours ms",
            "import typer ms (same user)",
            "python -c pass ms",
            "ours/typer",
            "goal",
        ],
        rows,
    )


def warmcache_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for res in results:
        tools = res["tools"]
        rows.append(
            [
                res["target"],
                f"{res['images']} × {res['label']}",
                _mmm(tools["--jobs 1"]["wall"]),
                _mmm(tools["--jobs 4"]["wall"]),
                _mmm(res["jobs_ratio"]),
                " / ".join(_mmm(tools[n]["cpu"]) for n in ("--jobs 1", "--jobs 4")),
                " / ".join(
                    f"{_mmm(res['busiest_thread_s'][n])} ({res['busiest_thread_name'][n]})"
                    for n in ("--jobs 1", "--jobs 4")
                ),
                _mmm(tools["re-warm (all cached)"]["wall"], 0, 1000),
                _mmm(tools["python -c 'import typer'"]["wall"], 0, 1000),
                _mmm(res["rewarm_ratio"]),
                _mmm(tools.get("re-warm (all cached), baseline build", {}).get("wall"), 0, 1000),
                _mmm(res.get("rewarm_vs_baseline_build")),
            ]
        )
    return table(
        [
            "target",
            "images",
            "--jobs 1 s",
            "--jobs 4 s",
            "jobs 4 / jobs 1",
            "CPU s (1 / 4)",
            "busiest thread CPU s (1 / 4)",
            "re-warm ms",
            "import typer ms",
            "re-warm / typer",
            "baseline build re-warm ms",
            "re-warm / baseline build",
        ],
        rows,
    )


def herd_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for res in results:
        tools = res["tools"]
        ours = tools.get("registry-client", {})
        aws = tools.get("aws s3 cp to one path") or tools.get("swift download to one path") or {}
        sreg = tools.get("sregistry pull", {})
        base = tools.get("baseline", {})
        wall_ratio = res.get("wall_ratio") or {}
        rows.append(
            [
                res["target"],
                str(res["n"]),
                res["label"],
                _mmm(ours.get("bytes_ratio"), 4),
                _verdict(
                    (ours.get("bytes_ratio") or {}).get("max"), GOALS["herd_bytes"] + HERD_SLACK
                ),
                _mmm(aws.get("bytes_ratio")),
                _mmm(sreg.get("bytes_ratio")),
                _mmm(ours.get("wall")),
                _mmm(base.get("wall")),
                _mmm(wall_ratio),
                _verdict(wall_ratio.get("median"), GOALS["herd_wall"]),
                _mmm(aws.get("wall")),
                _mmm(sreg.get("wall")),
                " / ".join(_f((t.get("failed") or {}).get("median"), 1) for t in (ours, aws, sreg)),
            ]
        )
    return table(
        [
            "target",
            "N",
            "image",
            "ours bytes/size",
            "goal 1.00",
            "naive script bytes/size",
            "sregistry bytes/size",
            "ours wall s",
            "cold+N warm s",
            "wall ratio",
            "goal ≤1.2",
            "naive script wall s",
            "sregistry wall s",
            "failed: ours / naive / sregistry",
        ],
        rows,
    )


FLAT_FROM = 256 * 1024**2  # below this, fewer chunks than threads: memory still ramps up
FLAT_SLOPE = 10.0  # MB per GiB that still counts as flat


def rss_rows(push: list[dict[str, Any]], pull: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Peak RSS of our pull and push by size, and the slope in MB per GiB (fitted over the
    sizes >= 256 MiB when there are two of them, else over all sizes)."""
    out = []
    for op, results in (("pull", pull), ("push", push)):
        targets = sorted({r["target"] for r in results})
        for target in targets:
            points = sorted(
                (r["bytes"], r["tools"]["registry-client"]["rss_mb"])
                for r in results
                if r["target"] == target
            )
            big = [(b, s) for b, s in points if b >= FLAT_FROM]
            fit = big if len(big) >= 2 else points
            out.append(
                {
                    "target": target,
                    "op": op,
                    "by_size": {f"{b / GiB:.2f} GiB": s for b, s in points},
                    "slope_mb_per_gib": slope(
                        [b / GiB for b, _ in fit], [s["median"] for _, s in fit]
                    ),
                    "slope_over": "sizes >= 256 MiB" if fit is big else "all sizes",
                    "peak_mb": max(s["median"] for _, s in points),
                }
            )
    return out


def rss_table(rows: list[dict[str, Any]]) -> str:
    body = []
    for row in rows:
        sizes = "; ".join(f"{k}: {_f(v['median'], 0)}" for k, v in row["by_size"].items())
        flat = abs(row["slope_mb_per_gib"]) <= FLAT_SLOPE
        ok = row["peak_mb"] <= GOALS["rss_mb"] and flat
        note = "" if row["slope_over"] == "sizes >= 256 MiB" else " (all sizes)"
        body.append(
            [
                row["target"],
                row["op"],
                sizes,
                _f(row["slope_mb_per_gib"], 1) + note,
                _f(row["peak_mb"], 0),
                "met" if ok else "MISSED",
            ]
        )
    return table(
        [
            "target",
            "op",
            "median peak RSS MB by size",
            "slope MB/GiB",
            "max MB",
            "goal ≤150 MB, flat",
        ],
        body,
    )


def _busy(res: dict[str, Any], tool: str) -> float | None:
    """Cores kept busy (client + server CPU over wall): 2.0 means this 2-core box is full."""
    data = res["tools"].get(tool) or {}
    server = (data.get("server_cpu") or {}).get("median")
    if server is None or not data.get("wall", {}).get("median"):
        return None
    return (data["cpu"]["median"] + server) / data["wall"]["median"]


def cpu_rows(pull: list[dict[str, Any]], floor: dict[str, float]) -> list[dict[str, Any]]:
    out = []
    for res in pull:
        cpu = res["cpu_s_per_gib"]
        server = res.get("server_cpu_s_per_gib") or {}
        peers = {n: v for n, v in cpu.items() if n not in ("registry-client", "curl")}
        best = min(peers, key=lambda n: peers[n]["median"], default=None)
        fastest = res.get("fastest_peer")
        out.append(
            {
                "target": res["target"],
                "label": res["label"],
                "ours": cpu["registry-client"],
                "curl": cpu.get("curl"),
                "least_cpu_peer": best,
                "peer": peers.get(best),
                "server_ours": server.get("registry-client"),
                "server_fastest": server.get(fastest) if fastest else None,
                "fastest_peer": fastest,
                "busy_ours": _busy(res, "registry-client"),
                "busy_fastest": _busy(res, fastest) if fastest else None,
                "floor_md5_sha256": floor.get("md5+sha256"),
            }
        )
    return out


def cpu_table(rows: list[dict[str, Any]]) -> str:
    body = [
        [
            r["target"],
            r["label"],
            _mmm(r["ours"]),
            r["least_cpu_peer"] or "-",
            _mmm(r["peer"]),
            _mmm(r["curl"]),
            _f(r["floor_md5_sha256"]),
            _f(r["ours"]["median"] / r["floor_md5_sha256"]) if r["floor_md5_sha256"] else "-",
            f"{_mmm(r.get('server_ours'))} / {_mmm(r.get('server_fastest'))}",
            f"{_f(r.get('busy_ours'))} / {_f(r.get('busy_fastest'))}",
        ]
        for r in rows
    ]
    return table(
        [
            "target",
            "size",
            "ours CPU s/GiB",
            "least-CPU peer",
            "peer CPU s/GiB",
            "curl CPU s/GiB",
            "floor md5+sha256 s/GiB",
            "ours/floor",
            "server CPU s/GiB: ours / fastest peer",
            "cores busy: ours / fastest peer",
        ],
        body,
    )


def threads_table(pull: list[dict[str, Any]]) -> str:
    """The busiest thread of each build's cold pull: what bounds its speed on a node with
    cores and network to spare (CPU s per GiB; 0.8 means at most 1.25 GiB/s)."""
    body = []
    for res in pull:
        for tool, data in (res.get("threads_s_per_gib") or {}).items():
            busiest = data["busiest"]
            body.append(
                [
                    res["target"],
                    res["label"],
                    tool,
                    f"{_mmm(busiest)} ({data['busiest_name']})",
                    _verdict(busiest.get("median"), GOALS["busiest_thread"]),
                    _mmm(data["sha256"]),
                    _mmm(data["busiest_worker"]),
                    _mmm(data["workers"]),
                    _mmm(data["other"]),
                    _mmm(data["total"]),
                ]
            )
    return table(
        [
            "target",
            "size",
            "build",
            "busiest thread CPU s/GiB",
            "goal ≤0.8",
            "sha256 thread",
            "busiest range worker",
            "all range workers",
            "other threads",
            "all threads",
        ],
        body,
    )


def cloud_table(rows: list[dict[str, Any]]) -> str:
    """Our cold pull / the vendor SDK's download, on the cloud emulators."""
    body = []
    for r in rows:
        ours, peer = r["tools"]["registry-client"], r["tools"][r["peer"]]
        body.append(
            [
                r["target"],
                r["label"],
                _mmm(ours["wall"]),
                r["peer"],
                _mmm(peer["wall"]),
                _mmm(r["ratio"]),
                f"{_f(ours['cpu_s_per_gib']['median'])} / {_f(peer['cpu_s_per_gib']['median'])}",
                f"{_f(ours['server_cpu_s_per_gib'].get('median'))} / "
                f"{_f(peer['server_cpu_s_per_gib'].get('median'))}",
                f"{_f(ours['rss_mb']['median'], 0)} / {_f(peer['rss_mb']['median'], 0)}",
            ]
        )
    headers = [
        "emulator",
        "size",
        "ours s",
        "SDK peer",
        "peer s",
        "ours/peer",
        "client CPU s/GiB: ours / peer",
        "emulator CPU s/GiB: ours / peer",
        "peak RSS MB: ours / peer",
    ]
    return table(headers, body)


def migrate_tables(fig: dict[str, Any]) -> list[str]:
    """Our migrate / rclone copy: a registry, a killed run, 1,000 small images."""
    from tests.benchmarks.migration import OURS, RCLONE

    parts: list[str] = []
    reg = fig.get("registry")
    if reg:
        ours, peer = reg["tools"][OURS], reg["tools"][RCLONE]
        busiest = [run[0] for run in reg["threads"] if run]
        rows = [
            [
                f"{reg['images']} images, {reg['bytes'] / 1e6:.0f} MB",
                _mmm(ours["wall"]),
                _mmm(peer["wall"]),
                _mmm(reg["ratio"]),
                f"{_f(ours['cpu']['median'])} / {_f(peer['cpu']['median'])}",
                f"{_f(ours['rss_mb']['median'], 0)} / {_f(peer['rss_mb']['median'], 0)}",
                _f(max(busiest), 2) if busiest else "-",
                f"{max(reg['cache_growth'] or [0]) / 1e6:.1f} MB",
            ]
        ]
        headers = [
            "Swift → S3 (s3api)",
            "ours s",
            "rclone s",
            "ours/rclone",
            "CPU s: ours / rclone",
            "peak RSS MB: ours / rclone",
            "busiest thread CPU s",
            "node cache growth",
        ]
        parts += [table(headers, rows), "", "Our CPU seconds per thread, busiest first, per run:"]
        parts += [", ".join(_f(t) for t in run) for run in reg["threads"]]
    killed = fig.get("killed")
    if killed:
        rows = [
            [
                tool,
                f"{v['killed_at'] / 1e6:.0f} MB",
                f"{v['sent'] / 1e6:.0f} MB",
                _f(v["sent_ratio"], 3),
                "yes" if v["within_goal"] else "NO",
            ]
            for tool, v in killed["tools"].items()
        ]
        headers = [
            "kill -9 at half, rerun",
            "killed at",
            "uploaded in all",
            "/ total",
            "≤ total + largest",
        ]
        parts += ["", table(headers, rows)]
    small = fig.get("small")
    if small:
        again = small["again"]
        rows = [
            [
                "first copy",
                _f(small["first"][OURS]),
                _f(small["first"][RCLONE]),
                _f(small["first_ratio"]),
            ],
            [
                "nothing left to do",
                _mmm(again[OURS]["wall"]),
                _mmm(again[RCLONE]["wall"]),
                _mmm(small["again_ratio"]),
            ],
        ]
        headers = [f"{small['images']} small images", "ours s", "rclone s", "ours/rclone"]
        parts += ["", table(headers, rows)]
    return parts


def render(results: dict[str, Any]) -> str:
    parts = []
    if results.get("pull"):
        parts += [
            "## Cold pull (median [min–max])",
            transfer_table(results["pull"], "pull"),
            "",
            "All tools, median seconds:",
            peers_table(results["pull"]),
        ]
    if results.get("push"):
        parts += [
            "",
            "## Push",
            transfer_table(results["push"], "push"),
            "",
            "All tools, median seconds:",
            peers_table(results["push"]),
        ]
    if results.get("warm"):
        parts += ["", "## Warm pull (cache hit)", warm_table(results["warm"])]
    if results.get("warmcache"):
        parts += ["", "## cache warm (empty cache; then again, all cached)"]
        parts += [warmcache_table(results["warmcache"])]
    if results.get("herd"):
        parts += ["", "## Herd (N concurrent pulls, one cold cache)", herd_table(results["herd"])]
    if results.get("cloud"):
        parts += ["", "## Cloud emulators: cold pull vs the SDK", cloud_table(results["cloud"])]
    if results.get("migrate"):
        parts += ["", "## Migration: registry-client migrate vs rclone copy"]
        parts += migrate_tables(results["migrate"])
    if results.get("rss"):
        parts += ["", "## Peak RSS", rss_table(results["rss"])]
    if results.get("cpu"):
        parts += ["", "## CPU per GiB pulled", cpu_table(results["cpu"])]
    if any(r.get("threads_s_per_gib") for r in results.get("pull") or []):
        parts += ["", "## Busiest thread of a cold pull", threads_table(results["pull"])]
    if results.get("floor"):
        parts += [
            "",
            "Hashing floor (CPU s per GiB, in-process hashlib): "
            + ", ".join(f"{k} {_f(v)}" for k, v in results["floor"].items()),
        ]
    for mode, frames in (results.get("profile") or {}).items():
        parts += [
            "",
            f"## py-spy of one cold pull ({mode}): seconds by thread and leaf frame",
            table(["thread", "frame", "s"], [[th, name, _f(sec)] for th, name, sec in frames]),
        ]
    if results.get("notes"):
        parts += ["", "## Notes", *(f"- {n}" for n in results["notes"])]
    return "\n".join(parts)


__all__ = ["render", "rss_rows", "cpu_rows", "summary"]
