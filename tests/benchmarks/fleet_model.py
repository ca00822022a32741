"""A large start, computed: N nodes pull one image through caches (docs/fleet.md).

A bottleneck model, not a packet simulation. Each stage moves bytes at the rate its slowest
resource allows — its network link, or its cores divided by the CPU seconds one GB costs it —
and the stages overlap (the caches fill and serve slice by slice), so the time to the last
node is the longest stage plus the fill of one slice per cache level. What comes in:

- CPU seconds per GB for the cache serving, for a node's pull (all threads and the busiest
  one) and for the store: measured on loopback by tests/benchmarks/fleet.py (nginx) and by
  hand for Varnish and Squid (ENGINES);
- links, cores and the store's share of bandwidth: assumptions, stated in each row;
- bytes: counted, not assumed — direct pulls cost the store N copies, a cache level one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

GB = 1e9


@dataclass(frozen=True)
class Rates:
    """CPU seconds per GB moved, measured on loopback."""

    cache_cpu_per_gb: float  # nginx serving slices
    node_cpu_per_gb: float  # one node's pull, every thread (hashing included)
    node_busiest_per_gb: float  # one node's busiest thread: caps a node's speed
    store_cpu_per_gb: float = 0.0  # the store serving (informative; its link is assumed)
    cache_cores: int | None = None  # cores the cache engine can use (Squid: one process)


@dataclass(frozen=True)
class Engine:
    """A cache engine's serving cost as measured on loopback: CPU seconds per GB served (the
    range over the runs) and how many cores it can use."""

    name: str
    cpu_per_gb: tuple[float, float]
    cores: int | None = None  # None: every core of the cache server

    def rates(self, node: Rates, cpu_per_gb: float) -> Rates:
        return replace(node, cache_cpu_per_gb=cpu_per_gb, cache_cores=self.cores)


# Measured serving slices over loopback from a Swift store (docs/fleet.md "At scale").
ENGINES = (
    Engine("nginx", (0.6, 0.7)),
    Engine("Varnish", (0.5, 0.6)),
    Engine("Squid", (6.5, 8.6), cores=1),  # one process: one core, however many there are
)


@dataclass(frozen=True)
class Hardware:
    """Assumed, not measured: a typical HPC site."""

    cache_gbit: float = 100.0  # each cache server's link
    cache_cores: int = 32
    node_gbit: float = 25.0
    node_cores: int = 32
    store_gbit: float = 100.0  # what the object store gives this site
    slice_bytes: int = 16 * 1024 * 1024

    def describe(self) -> str:
        return (
            f"caches {self.cache_gbit:g} Gb/s and {self.cache_cores} cores, nodes "
            f"{self.node_gbit:g} Gb/s and {self.node_cores} cores, store {self.store_gbit:g} Gb/s"
        )


@dataclass(frozen=True)
class Start:
    topology: str  # "direct", "site", "racks"
    nodes: int
    size: int  # bytes
    racks: int = 0
    racks_down: int = 0
    store_bytes: float = 0.0
    site_cache_bytes: float = 0.0  # served by the site cache
    rack_cache_bytes: float = 0.0  # served by each rack cache
    seconds: float = 0.0  # to the last node
    bottleneck: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cache_rate(rates: Rates, hw: Hardware) -> float:
    """Bytes/s one cache server can serve: its link, or the cores its engine can use."""
    cores = min(hw.cache_cores, rates.cache_cores or hw.cache_cores)
    return min(hw.cache_gbit * GB / 8, cores * GB / rates.cache_cpu_per_gb)


def node_rate(rates: Rates, hw: Hardware) -> float:
    """Bytes/s one node can pull and verify: its link, its busiest thread, its cores."""
    return min(
        hw.node_gbit * GB / 8,
        GB / rates.node_busiest_per_gb,
        hw.node_cores * GB / rates.node_cpu_per_gb,
    )


def simulate(
    topology: str,
    nodes: int,
    size: int,
    rates: Rates,
    hw: Hardware,
    racks: int = 0,
    racks_down: int = 0,
) -> Start:
    """Bytes per tier and the time to the last node of one start. With `racks_down`, that
    many rack caches are dead and their nodes read through the site cache instead."""
    store = hw.store_gbit * GB / 8
    stages = {"node": size / node_rate(rates, hw)}
    site_bytes = rack_bytes = 0.0
    if topology == "direct":
        levels, store_bytes = 0, float(nodes * size)
    elif topology == "site":
        levels, store_bytes, site_bytes = 1, float(size), float(nodes * size)
    elif topology == "racks":
        if racks < 1 or not 0 <= racks_down < racks:
            raise ValueError("racks topology needs racks >= 1 and some of them up")
        per_rack = -(-nodes // racks)
        levels, store_bytes = 2, float(size)
        # the live rack caches, and the nodes of the dead ones
        site_bytes = float(((racks - racks_down) + racks_down * per_rack) * size)
        rack_bytes = float(per_rack * size)
        stages["rack cache"] = rack_bytes / cache_rate(rates, hw)
    else:
        raise ValueError(f"unknown topology {topology!r}")
    stages["store link"] = store_bytes / store
    if site_bytes:
        stages["site cache"] = site_bytes / cache_rate(rates, hw)
    slowest = max(stages, key=lambda k: stages[k])
    # The first slice has to come down every level before a node can start on it.
    latency = levels * hw.slice_bytes / store
    return Start(
        topology,
        nodes,
        size,
        racks,
        racks_down,
        store_bytes,
        site_bytes,
        rack_bytes,
        stages[slowest] + latency,
        slowest,
    )
