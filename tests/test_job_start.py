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


def test_verbose_logs_of_an_s3_pull_hold_no_secret(rig: Rig, tmp_path: Path) -> None:
    rig.push(MiB, seed=5)
    rig.proxy.add_fault(Fault.status(503, times=1, retry_after=0))  # one retry to log
    log = tmp_path / "pull.log"
    result = run_cli("-vv", "--log-file", str(log), "pull", "lab/app:1", env=rig.env)
    assert result.returncode == 0, result.stderr
    text = result.stderr + log.read_text()
    assert f"remote lab: s3 {rig.bucket} at {rig.proxy.url}" in text
    assert "retry 1" in text and "pulled lab/app:1: " in text
    secret = rig.server.secret_key
    assert secret not in text.replace(f"access_key={secret}", "")  # moto's key == secret
    assert "Signature=" not in text and "Authorization" not in text


def test_batch_jobs_get_plain_progress_lines_and_resume_says_where(rig: Rig) -> None:
    import signal

    from tests.test_cache_load import resume_state, wait_for

    rig.push(8 * MiB, seed=6)
    rig.proxy.add_fault(Fault.slow(2 * MiB, times=None, path="lab/app", has_range=True))
    env = {**rig.env, "REGISTRY_CLIENT_PROGRESS_INTERVAL": "0.5"}
    result = run_cli("pull", "lab/app:1", env=env)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("pull lab/app:1: ")]
    assert lines and all("MiB/s" in line and "\x1b" not in line for line in lines), result.stderr
    assert run_cli("-q", "pull", "--force", "lab/app:1", env=env).stderr == ""
    # killed half-way, the next pull resumes and says so
    run_cli("cache", "clean", env=env)
    rig.push(8 * MiB, seed=7)
    rig.proxy.add_fault(Fault.slow(MiB, times=None, path="lab/app", has_range=True))
    proc = rig.spawn()
    wait_for(lambda: len(resume_state(rig)) >= 2, what="two finished ranges")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    rig.proxy.clear_faults()
    resumed = run_cli("pull", "lab/app:1", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming lab/app:1 at " in resumed.stderr and " MB of 8 MB" in resumed.stderr


def test_ls_of_an_s3_url_lists_that_collection(rig: Rig) -> None:
    rig.push(MiB, seed=8)
    env = {
        **rig.env,
        "AWS_ENDPOINT_URL": rig.proxy.url,
        "AWS_ACCESS_KEY_ID": rig.server.access_key,
        "AWS_SECRET_ACCESS_KEY": rig.server.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    url = f"s3://{rig.bucket}/lab"
    result = run_cli("ls", url, "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert [r["ref"] for r in json.loads(result.stdout)] == [f"{url}/app:1"]
    named = json.loads(run_cli("ls", "lab:lab", "--json", env=env).stdout)
    assert [r["ref"] for r in named] == ["lab:lab/app:1"]
