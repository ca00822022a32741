"""A large start, simulated tick by tick: N nodes pull one image through caches (docs/fleet.md).

fleet_model.py computes a start from its slowest tier; this steps through it, so that what
the bottleneck model leaves out — nodes arriving over a spread, caches that fill slice by
slice while the nodes wait on them, several tiers competing for one link — shows in the
time to the last node. Where the model applies (every node at once) the two agree;
tests/test_fleet_model.py checks it. Standard library only.

Per tick of simulated time:

- Nodes arrive over `spread` seconds in `waves`. The nodes of one rack that arrive in the
  same wave move together (a cohort: one position, a count), and identical racks are
  simulated once and counted as many times as there are of them: 1,000 nodes in 25 racks
  are 2 rack groups × the waves, not 1,000 nodes.
- A node asks its cache for the slices just ahead of it (its ranges in flight). A cache
  fills slices in order, one fill per slice — the lock, as nginx's `proxy_cache_lock`: the
  nodes that want a slice being filled wait, and see it only once it is whole — from the
  tier above, which must have the slice whole itself (the store has everything).
- Shared per tick, max-min fairly (each node and each filling cache one share): the store's
  link, each cache's output (its link, or the cores its engine can use at its CPU seconds
  per GB) and each cache's input link. A node reads at most its own rate (fleet_model's
  node_rate: its link, its busiest thread, its cores).

The tick starts at one slice's time on a cache link and doubles every TICKS_PER_DOUBLING
ticks, so every start, a minute or a day long, is resolved to ~1/700 of its length in a few
thousand ticks. Not simulated: TCP's own dynamics, disks, TLS, failures, lock timeouts.

    python -m tests.benchmarks.fleet_sim [--nodes 1000] [--gb 10] [--racks 25] [--spread 60]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from tests.benchmarks.fleet_model import (
    ENGINES,
    GB,
    Engine,
    Hardware,
    Rates,
    Start,
    cache_rate,
    node_rate,
)

TICKS_PER_DOUBLING = 500
LOOKAHEAD_TICKS = 4  # a node asks this many ticks of reading ahead: one per tier, and spare
RANGES_IN_FLIGHT = 8  # a node's concurrent ranges (the client's default)
SATURATED = 0.99  # a tier moving this share of what it can is the bottleneck of that tick
# What the project's own fleet benchmark measured for a node and the store (docs/fleet.md).
MEASURED = Rates(cache_cpu_per_gb=0.25, node_cpu_per_gb=3.3, node_busiest_per_gb=0.56)


@dataclass(eq=False)
class Tier:
    """The store, or `copies` identical caches; `filled` is what one of them holds."""

    name: str
    rate: float  # bytes/s one of them serves
    link_in: float  # bytes/s one of them can take in while filling
    upstream: Tier | None  # None: the store, which has every byte
    copies: int = 1
    filled: float = 0.0
    wanted: float = 0.0  # bytes asked of it so far, whole slices
    served: float = 0.0  # bytes, over all copies
    saturated_s: float = 0.0  # seconds it moved all it could

    def whole(self, size: int, slice_bytes: int) -> float:
        """Bytes one can serve: the slices it holds whole (a slice being filled is locked)."""
        if self.upstream is None or self.filled >= size:
            return float(size)
        return float(self.filled // slice_bytes * slice_bytes)

    def ask(self, upto: float, size: int, slice_bytes: int) -> None:
        whole_slices = -(-upto // slice_bytes) * slice_bytes
        self.wanted = max(self.wanted, min(float(size), whole_slices))


@dataclass(eq=False)
class Cohort:
    """Nodes (over every rack the group stands for) that arrive and move together."""

    nodes: float
    arrives: float
    tier: Tier
    done: float = 0.0  # bytes each of them has
    finished: float | None = None


@dataclass(frozen=True)
class Simulated(Start):
    first_node: float = 0.0
    ticks: int = 0
    saturated_s: dict[str, float] = field(default_factory=dict)


def share(capacity: float, demands: Sequence[float], weights: Sequence[float]) -> list[float]:
    """Max-min fair shares of `capacity`: the smallest demands (per share) are met in full,
    the rest split what is left by weight."""
    grants = [0.0] * len(demands)
    left, weight_left = capacity, sum(weights)
    for i in sorted(range(len(demands)), key=lambda i: demands[i] / weights[i]):
        grants[i] = min(demands[i], left * weights[i] / weight_left)
        left -= grants[i]
        weight_left -= weights[i]
    return grants


def _tiers(
    topology: str, rates: Rates, hw: Hardware, racks: int, racks_down: int
) -> tuple[Tier, list[tuple[Tier, int]]]:
    """The store and, for each group of nodes, the tier it reads from and how many racks
    (or 1) the group stands for; rack caches first."""
    link = hw.cache_gbit * GB / 8
    store = Tier("store link", hw.store_gbit * GB / 8, 0.0, None)
    if topology == "direct":
        return store, [(store, 1)]
    site = Tier("site cache", cache_rate(rates, hw), link, store)
    if topology == "site":
        return store, [(site, 1)]
    if topology != "racks":
        raise ValueError(f"unknown topology {topology!r}")
    if racks < 1 or not 0 <= racks_down < racks:
        raise ValueError("racks topology needs racks >= 1 and some of them up")
    up = Tier("rack cache", cache_rate(rates, hw), link, site, copies=racks - racks_down)
    groups = [(up, racks - racks_down)]
    if racks_down:
        groups.append((site, racks_down))  # their nodes read through the site cache
    return store, groups


def simulate_start(
    topology: str,
    nodes: int,
    size: int,
    rates: Rates,
    hw: Hardware,
    racks: int = 0,
    racks_down: int = 0,
    spread: float = 0.0,
    waves: int = 10,
) -> Simulated:
    """One start, tick by tick: bytes per tier and the time to the last node. Nodes are spread
    evenly over the racks and arrive in `waves` evenly over `spread` seconds."""
    store, groups = _tiers(topology, rates, hw, racks, racks_down)
    slice_bytes = hw.slice_bytes
    per_group = nodes / (racks if topology == "racks" else 1)
    waves = waves if spread > 0 else 1
    cohorts = [
        Cohort(per_group * racks_in_group / waves, spread * w / waves, tier)
        for tier, racks_in_group in groups
        for w in range(waves)
    ]
    caches = _caches(store, groups)
    node_bps = node_rate(rates, hw)
    dt = slice_bytes / (hw.cache_gbit * GB / 8)
    t, ticks = 0.0, 0
    while any(c.finished is None for c in cohorts):
        _tick(cohorts, caches, store, t, dt, size, slice_bytes, node_bps)
        t += dt
        ticks += 1
        if ticks % TICKS_PER_DOUBLING == 0:
            dt *= 2
        if ticks > 100 * TICKS_PER_DOUBLING:
            raise RuntimeError("the simulated start makes no progress")
    tiers = [*caches, store]
    rack = next((tier for tier, _ in groups if tier.name == "rack cache"), None)
    site = next((tier for tier in caches if tier.name == "site cache"), None)
    busiest = max(tiers, key=lambda x: x.saturated_s)
    last = max(c.finished or 0.0 for c in cohorts)
    return Simulated(
        topology,
        nodes,
        size,
        racks,
        racks_down,
        store_bytes=store.served,
        site_cache_bytes=site.served if site else 0.0,
        rack_cache_bytes=rack.served / rack.copies if rack else 0.0,
        seconds=last,
        bottleneck=busiest.name if busiest.saturated_s > last / 2 else "node",
        first_node=min(c.finished or 0.0 for c in cohorts),
        ticks=ticks,
        saturated_s={x.name: round(x.saturated_s, 3) for x in tiers},
    )


def _tick(
    cohorts: list[Cohort],
    caches: list[Tier],
    store: Tier,
    t: float,
    dt: float,
    size: int,
    slice_bytes: int,
    node_bps: float,
) -> None:
    """One tick: every node and cache asks the tier it reads from for what it can use, and
    each tier shares out what it can move in the tick."""
    tiers = [*caches, store]
    asks: dict[int, list[tuple[float, float, Cohort | Tier]]] = {id(x): [] for x in tiers}
    lookahead = RANGES_IN_FLIGHT * slice_bytes + LOOKAHEAD_TICKS * node_bps * dt
    for c in cohorts:
        if c.finished is None and c.arrives <= t:
            c.tier.ask(c.done + lookahead, size, slice_bytes)
            per_node = min(node_bps * dt, c.tier.whole(size, slice_bytes) - c.done)
            asks[id(c.tier)].append((per_node * c.nodes, c.nodes, c))
    for cache in caches:  # bottom first: a rack's asks reach the site cache this tick
        assert cache.upstream is not None
        cache.upstream.ask(cache.wanted, size, slice_bytes)
        ready = min(cache.wanted, cache.upstream.whole(size, slice_bytes))
        fill = min(ready - cache.filled, cache.link_in * dt) * cache.copies
        asks[id(cache.upstream)].append((fill, cache.copies, cache))
    for tier in tiers:
        _move(tier, asks[id(tier)], tier.rate * dt * tier.copies, t, dt, size)


def _caches(store: Tier, groups: list[tuple[Tier, int]]) -> list[Tier]:
    """Every cache of the start, bottom first."""
    found: list[Tier] = []
    for tier, _ in groups:
        while tier is not store and tier not in found:
            found.append(tier)
            assert tier.upstream is not None
            tier = tier.upstream
    return found


def _move(
    tier: Tier,
    asks: list[tuple[float, float, Cohort | Tier]],
    capacity: float,
    t: float,
    dt: float,
    size: int,
) -> None:
    """Share what `tier` can move this tick among its asks, and move it."""
    if not asks:
        return
    grants = share(capacity, [a[0] for a in asks], [a[1] for a in asks])
    moved = sum(grants)
    tier.served += moved
    if moved >= SATURATED * capacity:
        tier.saturated_s += dt
    for (_, weight, who), got in zip(asks, grants, strict=True):
        if isinstance(who, Tier):
            who.filled += got / who.copies
        elif got > 0:
            step = got / weight
            needed = size - who.done
            who.done += step
            if who.done >= size * (1 - 1e-12):
                who.done = float(size)
                who.finished = t + dt * min(1.0, needed / step)


TOPOLOGIES = (
    ("one site cache", "site", 0),
    ("25 rack caches under a site cache", "racks", 0),
    ("the same, one rack cache down", "racks", 1),
)


def engine_rows(
    node: Rates,
    hw: Hardware,
    nodes: int = 1000,
    size: int = 10 * 10**9,
    racks: int = 25,
    spread: float = 0.0,
    waves: int = 10,
    engines: Sequence[Engine] = ENGINES,
) -> list[dict[str, Any]]:
    """The start without a cache, then through each engine at both ends of its measured CPU
    per GB: bytes per tier, first and last node, bottleneck (at the costlier end)."""
    run = partial(simulate_start, nodes=nodes, size=size, hw=hw, spread=spread, waves=waves)
    rows = [_row("no cache", "", run("direct", rates=node), run("direct", rates=node))]
    for engine in engines:
        for label, topology, down in TOPOLOGIES:
            low, high = (
                run(topology, rates=engine.rates(node, cpu), racks=racks, racks_down=down)
                for cpu in engine.cpu_per_gb
            )
            rows.append(_row(label.replace("25", str(racks)), engine.name, low, high))
    return rows


def _row(label: str, engine: str, low: Simulated, high: Simulated) -> dict[str, Any]:
    return {
        "topology": label,
        "engine": engine,
        "store_bytes": high.store_bytes,
        "site_cache_bytes": high.site_cache_bytes,
        "rack_cache_bytes": high.rack_cache_bytes,
        "first_node_s": [round(low.first_node, 1), round(high.first_node, 1)],
        "last_node_s": [round(low.seconds, 1), round(high.seconds, 1)],
        "bottleneck": high.bottleneck,
        "ticks": max(low.ticks, high.ticks),
    }


def seconds_label(low: float, high: float) -> str:
    def one(s: float) -> str:
        return f"{s:,.0f}" if s >= 100 else f"{s:.0f}"

    def hours(s: float) -> str:
        return f"{s / 3600:.0f}"

    text = one(low) if one(low) == one(high) else f"{one(low)}–{one(high)}"
    if high < 3 * 3600:
        return text + " s"
    span = hours(high) if hours(low) == hours(high) else f"{hours(low)}–{hours(high)}"
    return f"{text} s ({span} h)"


def bytes_label(n: float) -> str:
    if not n:
        return "—"
    return f"{n / 1e12:g} TB" if n >= 1e12 else f"{n / 1e9:g} GB"


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| engine | topology | from the store | site cache serves | each rack cache serves "
        "| first node | last node | bottleneck |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['engine'] or '—'} | {r['topology']} | {bytes_label(r['store_bytes'])} "
            f"| {bytes_label(r['site_cache_bytes'])} | {bytes_label(r['rack_cache_bytes'])} "
            f"| {seconds_label(*r['first_node_s'])} | {seconds_label(*r['last_node_s'])} "
            f"| {r['bottleneck']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks.fleet_sim", description=__doc__)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--gb", type=float, default=10.0, help="image size, 10**9 bytes")
    p.add_argument("--racks", type=int, default=25)
    p.add_argument("--spread", type=float, default=60.0, help="seconds over which nodes arrive")
    p.add_argument("--waves", type=int, default=10)
    args = p.parse_args(argv)
    hw = Hardware()
    size = int(args.gb * GB)
    wall, cpu, starts = time.perf_counter(), time.process_time(), 0
    for spread in dict.fromkeys((0.0, args.spread)):
        rows = engine_rows(MEASURED, hw, args.nodes, size, args.racks, spread, args.waves)
        starts += 2 * len(rows)
        head = f"{args.nodes} nodes x {size / GB:g} GB, arriving over {spread:g} s"
        print(f"\n{head}; {hw.describe()}\n{render(rows)}")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"\n{starts} starts simulated in {wall:.2f} s ({cpu:.2f} CPU s, one thread)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
