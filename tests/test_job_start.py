"""Job starts against a real S3 server (moto) behind the fault proxy: a store outage does
not fail jobs whose node holds the image (`stale_if_error`), and a pinned pull of a
reference this node has not seen costs exactly one HEAD."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.faultproxy import Fault, FaultProxy
from tests.support.helpers import run_cli
from tests.test_cache_load import FAULT_TIMEOUTS, Rig

pytestmark = pytest.mark.servers
MiB = 1 << 20


@pytest.fixture
def rig(moto_server: Any, tmp_path: Path) -> Iterator[Rig]:
    with FaultProxy(moto_server.s3_endpoint) as proxy:
        yield Rig(moto_server, tmp_path, proxy, FAULT_TIMEOUTS)


def outage(rig: Rig) -> None:
    rig.proxy.add_fault(Fault.status(503, times=None, method=None, retry_after=0))


def test_store_outage_answers_a_cached_tag_with_a_warning(rig: Rig) -> None:
    data = rig.push(MiB, seed=1)
    first = rig.pull()
    assert first.returncode == 0, first.stderr
    outage(rig)
    result = rig.pull()
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["stale"] is True and record["path"] == json.loads(first.stdout)["path"]
    assert Path(record["path"]).read_bytes() == data
    assert "warning: the store is unreachable" in result.stderr
    assert "answering lab/app:1 from this node's cache" in result.stderr


def test_store_outage_without_a_cached_copy_says_so(rig: Rig) -> None:
    rig.push(MiB, seed=2)
    outage(rig)
    result = rig.pull()
    assert result.returncode == 6
    assert "not in this node's cache" in result.stderr
    assert "--offline" in result.stderr and "Traceback" not in result.stderr


def test_stale_if_error_off_fails_and_points_at_offline(rig: Rig) -> None:
    rig.push(MiB, seed=3)
    assert rig.pull().returncode == 0
    with open(rig.env["REGISTRY_CLIENT_CONFIG"], "a") as fh:
        fh.write("\n[cache]\nstale_if_error = false\n")
    outage(rig)
    result = rig.pull()
    assert result.returncode == 6
    assert "pull --offline" in result.stderr and "stale_if_error" in result.stderr
    assert run_cli("pull", "--offline", "lab/app:1", env=rig.env).returncode == 0


def test_pinned_pull_costs_one_head_where_the_node_has_not_seen_it(rig: Rig) -> None:
    rig.push(MiB, seed=4)
    sha = json.loads(rig.pull().stdout)["sha256"]
    assert run_cli("push", str(rig.tmp / "img-4.sif"), "lab/other:1", env=rig.env).returncode == 0
    rig.proxy.reset_stats()
    seen = run_cli("pull", f"lab/app:1@sha256:{sha}", env=rig.env)
    assert seen.returncode == 0 and rig.proxy.stats.total_requests == 0
    unseen = run_cli("pull", f"lab/other:1@sha256:{sha}", env=rig.env)
    assert unseen.returncode == 0 and unseen.stdout == seen.stdout
    assert rig.proxy.stats.requests == {"HEAD": 1}
    rig.proxy.reset_stats()
    again = run_cli("pull", f"lab/other:1@sha256:{sha}", env=rig.env)
    assert again.returncode == 0 and rig.proxy.stats.total_requests == 0  # now seen


def test_resolve_of_an_object_without_metadata_pulls_and_hashes_it(rig: Rig) -> None:
    from tests.support.helpers import s3_client

    body = bytes(range(256)) * 4096
    s3_client(rig.server).put_object(Bucket=rig.bucket, Key="lab/foreign:1.sif", Body=body)
    result = run_cli("resolve", "lab/foreign:1", env=rig.env)
    assert result.returncode == 0, result.stderr
    import hashlib

    assert result.stdout.strip() == f"lab/foreign:1@sha256:{hashlib.sha256(body).hexdigest()}"
