"""The large-start model (tests/benchmarks/fleet_model.py): bytes per tier and bottlenecks."""

from __future__ import annotations

import pytest

from tests.benchmarks.fleet_model import GB, Hardware, Rates, cache_rate, node_rate, simulate

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
