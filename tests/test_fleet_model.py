"""The large-start model (tests/benchmarks/fleet_model.py): bytes per tier and bottlenecks;
and the tick-by-tick simulation (tests/benchmarks/fleet_sim.py) against it."""

from __future__ import annotations

import pytest

from tests.benchmarks.fleet_model import (
    ENGINES,
    GB,
    Engine,
    Hardware,
    Rates,
    cache_rate,
    node_rate,
    simulate,
)
from tests.benchmarks.fleet_sim import engine_rows, render, share, simulate_start

RATES = Rates(cache_cpu_per_gb=0.6, node_cpu_per_gb=3.0, node_busiest_per_gb=1.0)
HW = Hardware()
SIZE = 10 * 10**9


def test_bytes_per_tier() -> None:
    direct = simulate("direct", 1000, SIZE, RATES, HW)
    site = simulate("site", 1000, SIZE, RATES, HW)
    racks = simulate("racks", 1000, SIZE, RATES, HW, racks=25)
    assert direct.store_bytes == 1000 * SIZE  # 10 TB
    assert site.store_bytes == racks.store_bytes == SIZE
    assert site.site_cache_bytes == 1000 * SIZE
    assert racks.site_cache_bytes == 25 * SIZE and racks.rack_cache_bytes == 40 * SIZE


def test_time_to_the_last_node() -> None:
    # 100 Gb/s links: 10 TB through one store or one cache link takes 800 s.
    assert simulate("direct", 1000, SIZE, RATES, HW).seconds == pytest.approx(800, rel=0.01)
    site = simulate("site", 1000, SIZE, RATES, HW)
    assert site.bottleneck == "site cache" and site.seconds == pytest.approx(800, rel=0.01)
    racks = simulate("racks", 1000, SIZE, RATES, HW, racks=25)
    assert racks.bottleneck == "rack cache"  # 400 GB per rack cache: 32 s
    assert racks.seconds == pytest.approx(32, rel=0.05)
    orphans = simulate("racks", 1000, SIZE, RATES, HW, racks=25, racks_down=1)
    assert orphans.store_bytes == SIZE  # a dead rack cache costs the site cache, not the store
    assert orphans.site_cache_bytes == (24 + 40) * SIZE
    assert orphans.bottleneck == "site cache" and orphans.seconds == pytest.approx(51.2, rel=0.05)
    alone = simulate("site", 1, SIZE, RATES, HW)
    assert alone.bottleneck == "node"  # one node: its busiest thread, 1 GB/s: 10 s
    assert alone.seconds == pytest.approx(10, rel=0.05)


def test_rates_take_the_slowest_resource() -> None:
    assert cache_rate(RATES, HW) == pytest.approx(12.5 * GB)  # the link, not 32 / 0.6 GB/s
    slow = Rates(cache_cpu_per_gb=8.0, node_cpu_per_gb=3.0, node_busiest_per_gb=1.0)
    assert cache_rate(slow, Hardware(cache_cores=4)) == pytest.approx(0.5 * GB)
    assert node_rate(RATES, HW) == pytest.approx(1 * GB)
    with pytest.raises(ValueError):
        simulate("mesh", 10, SIZE, RATES, HW)


def test_squid_serves_with_one_core_however_many_the_server_has() -> None:
    squid = next(e for e in ENGINES if e.name == "Squid")
    rates = squid.rates(RATES, 8.0)
    assert cache_rate(rates, HW) == pytest.approx(GB / 8)  # 1 core / 8 CPU s per GB
    assert cache_rate(rates, Hardware(cache_cores=64)) == cache_rate(rates, HW)
    assert cache_rate(squid.rates(RATES, 0.01), HW) == pytest.approx(12.5 * GB)  # the link


def test_fair_shares() -> None:
    # the small demand is met in full; the rest split what is left by weight
    assert share(10, [1, 100, 100], [1, 1, 1]) == pytest.approx([1, 4.5, 4.5])
    assert share(10, [100, 100], [1, 3]) == pytest.approx([2.5, 7.5])
    assert share(10, [2, 3], [1, 1]) == pytest.approx([2, 3])  # room for everyone
    assert share(0, [5], [1]) == [0]


TOPOLOGIES = [
    ("direct", 0, 0),
    ("site", 0, 0),
    ("racks", 25, 0),
    ("racks", 25, 1),
    ("racks", 4, 3),
]


@pytest.mark.parametrize("engine", ENGINES, ids=lambda e: e.name)
@pytest.mark.parametrize("topology,racks,down", TOPOLOGIES)
def test_simulation_agrees_with_the_model_when_every_node_starts_at_once(
    engine: Engine, topology: str, racks: int, down: int
) -> None:
    """Where the bottleneck model applies (every node at once), stepping through the start
    tick by tick gives the same bytes per tier, the same bottleneck and the same time."""
    for cpu in engine.cpu_per_gb:
        rates = engine.rates(RATES, cpu)
        model = simulate(topology, 1000, SIZE, rates, HW, racks=racks, racks_down=down)
        sim = simulate_start(topology, 1000, SIZE, rates, HW, racks=racks, racks_down=down)
        assert sim.store_bytes == pytest.approx(model.store_bytes, rel=1e-9)
        assert sim.site_cache_bytes == pytest.approx(model.site_cache_bytes, rel=1e-9)
        assert sim.rack_cache_bytes == pytest.approx(model.rack_cache_bytes, rel=1e-9)
        assert sim.bottleneck == model.bottleneck
        assert sim.seconds == pytest.approx(model.seconds, rel=0.01)
        assert sim.ticks < 10_000  # what keeps a start well under a second


def test_one_node_goes_at_its_own_pace() -> None:
    sim = simulate_start("racks", 1, SIZE, RATES, HW, racks=1)
    assert sim.bottleneck == "node" and sim.seconds == pytest.approx(10, rel=0.01)
    assert sim.store_bytes == pytest.approx(SIZE) and sim.rack_cache_bytes == pytest.approx(SIZE)


def test_a_spread_start_shows_what_the_model_leaves_out() -> None:
    """Nodes arriving over 60 s through 25 rack caches: the first wave cannot go faster than
    the site cache fills 25 racks (250 GB over one 100 Gb/s link: 20 s), and the last wave
    arrives at 54 s and then takes its own 10 s. The model says 32 s."""
    sim = simulate_start("racks", 1000, SIZE, RATES, HW, racks=25, spread=60, waves=10)
    assert sim.first_node == pytest.approx(20, rel=0.03)
    assert sim.seconds == pytest.approx(54 + 10, rel=0.02)
    assert sim.store_bytes == pytest.approx(SIZE)  # one copy from the store, still
    site = simulate_start("site", 1000, SIZE, RATES, HW, spread=60, waves=10)
    assert site.seconds == pytest.approx(800, rel=0.01)  # one busy link: the spread is lost in it
    assert site.first_node < site.seconds - 60


def test_the_per_engine_table() -> None:
    rows = engine_rows(RATES, HW, nodes=100, size=10**9, racks=5)
    assert [r["engine"] for r in rows] == ["", *[e.name for e in ENGINES for _ in range(3)]]
    squid_site = rows[-3]
    low, high = squid_site["last_node_s"]
    assert low == pytest.approx(100 * 6.5, rel=0.01) and high == pytest.approx(100 * 8.6, rel=0.01)
    text = render(rows)
    assert "| Squid | one site cache | 1 GB | 100 GB | — |" in text
    assert "| 650–86" in text  # 650 to 860 s, give or take a tick
