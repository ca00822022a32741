"""Draw bench-results/results.json as one PNG (run with the tools venv's matplotlib).

    python tests/benchmarks/chart.py results.json chart.png

Stand-alone on purpose: it imports only json and matplotlib.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _bars(
    ax: Any,
    labels: list[str],
    stats: list[dict[str, float]],
    goal: float | None,
    title: str,
    log: bool = False,
) -> None:
    meds = [s["median"] for s in stats]
    lo = [s["median"] - s["min"] for s in stats]
    hi = [s["max"] - s["median"] for s in stats]
    ax.bar(range(len(meds)), meds, yerr=[lo, hi], capsize=3, color="#4c78a8")
    if goal is not None:
        ax.axhline(goal, color="#e45756", linestyle="--", linewidth=1, label=f"goal {goal}")
        ax.legend(fontsize=7, loc="upper right")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    if log:
        ax.set_yscale("log")


def _transfer(ax: Any, results: list[dict[str, Any]], title: str) -> None:
    rows = [r for r in results if r.get("ratio_vs_fastest_peer")]
    _bars(
        ax,
        [f"{r['target']} {r['label']}" for r in rows],
        [r["ratio_vs_fastest_peer"] for r in rows],
        1.0,
        title,
    )


def _warm(ax: Any, results: list[dict[str, Any]]) -> None:
    labels, stats = [], []
    for res in results:
        shared = {f"shared {case}": r for case, r in (res.get("shared") or {}).items()}
        for case, ratio in {**res["ratio"], **shared}.items():
            labels.append(f"{res['target']} {case}")
            stats.append(ratio)
    _bars(ax, labels, stats, 1.5, "warm pull / python -c 'import typer'")


def _herd(ax: Any, results: list[dict[str, Any]]) -> None:
    tools = [
        ("registry-client",),
        ("aws s3 cp to one path", "swift download to one path"),
        ("sregistry pull",),
    ]
    labels = ["registry-client", "naive: N downloads to one path", "sregistry pull"]
    width = 0.27
    for i, names in enumerate(tools):
        vals = [
            next((r["tools"][n]["bytes_ratio"]["median"] for n in names if n in r["tools"]), 0)
            for r in results
        ]
        ax.bar([x + i * width for x in range(len(results))], vals, width, label=labels[i])
    ax.axhline(1.0, color="#e45756", linestyle="--", linewidth=1)
    ax.set_xticks(
        [x + width for x in range(len(results))],
        [f"{r['target']} N={r['n']}" for r in results],
        rotation=30,
        ha="right",
        fontsize=7,
    )
    ax.set_yscale("log")
    ax.set_title("herd: bytes served / image size", fontsize=9)
    ax.legend(fontsize=6)
    ax.tick_params(axis="y", labelsize=7)


def _rss(ax: Any, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        xs = [float(k.split()[0]) for k in row["by_size"]]
        ys = [v["median"] for v in row["by_size"].values()]
        ax.plot(xs, ys, marker="o", label=f"{row['target']} {row['op']}")
    ax.axhline(150, color="#e45756", linestyle="--", linewidth=1)
    ax.set_xlabel("image GiB", fontsize=7)
    ax.set_title("peak RSS MB (goal ≤150, flat)", fontsize=9)
    ax.legend(fontsize=6)
    ax.tick_params(labelsize=7)


def _cpu(ax: Any, rows: list[dict[str, Any]]) -> None:
    labels = [f"{r['target']} {r['label']}" for r in rows]
    _bars(ax, labels, [r["ours"] for r in rows], None, "CPU s/GiB pulled (line: md5+sha256)")
    floor = rows[0]["floor_md5_sha256"] if rows else None
    if floor:
        ax.axhline(floor, color="#54a24b", linestyle="--", linewidth=1)


def main(argv: list[str]) -> int:
    src, dest = argv
    with open(src) as fh:
        res = json.load(fh)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    panels = [
        (res.get("pull"), lambda ax, r: _transfer(ax, r, "cold pull: ours / fastest peer")),
        (res.get("push"), lambda ax, r: _transfer(ax, r, "push: ours / fastest peer")),
        (res.get("warm"), _warm),
        (res.get("herd"), _herd),
        (res.get("rss"), _rss),
        (res.get("cpu"), _cpu),
    ]
    for ax, (data, draw) in zip(axes.flat, panels, strict=True):
        if data:
            draw(ax, data)
        else:
            ax.set_axis_off()
    fig.suptitle(res.get("meta", {}).get("title", "registry-client benchmarks"), fontsize=10)
    fig.tight_layout()
    fig.savefig(dest, dpi=72)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
