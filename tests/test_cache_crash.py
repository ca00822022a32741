"""Crash safety and shared-filesystem mode: nothing partial is ever published."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from registry_client.config import RemoteConfig
from tests.conftest import new_bucket
from tests.support.backend_contract import write_random
from tests.support.helpers import console_script, run_cli, s3_options, write_config

pytestmark = pytest.mark.servers
MiB = 1024 * 1024
KILL_TRIALS = 12


def published_are_whole(cache_root: Path) -> list[str]:
    """Every published file hashes to its name; returns the names."""
    folder = cache_root / "v1" / "sif" / "sha256"
    names = []
    for path in folder.glob("*.sif") if folder.is_dir() else []:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem, path
        names.append(path.stem)
    return names


@pytest.fixture
def moto_env(moto_server: Any, tmp_path: Path) -> dict[str, str]:
    bucket = new_bucket(moto_server)
    remote = RemoteConfig("lab", "s3", s3_options(moto_server, bucket))
    cfg = write_config(tmp_path / "config.toml", {"lab": remote}, "lab")
    with open(cfg, "a") as fh:  # small ranges: many points at which a kill can land
        fh.write("\n[transfer]\nchunk_size = 1048576\nconcurrency = 2\n")
    return {
        "REGISTRY_CLIENT_CONFIG": str(cfg),
        "REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "nodecache"),
    }


def test_kill_9_at_random_moments_never_publishes_partial(
    moto_env: dict[str, str], tmp_path: Path
) -> None:
    image = tmp_path / "img.sif"
    data = write_random(image, 40 * MiB, seed=21)
    assert run_cli("push", str(image), "lab/crash:1", env=moto_env).returncode == 0
    cache = Path(moto_env["REGISTRY_CLIENT_CACHE_DIR"])
    rng = random.Random(5)
    outcomes = {"killed": 0, "finished": 0}
    finished = False
    for _ in range(KILL_TRIALS):
        # Each trial is a download: after a finished one the image is removed (a warm hit
        # would prove nothing); after a killed one, half the time it resumes.
        if finished or rng.random() < 0.5:
            run_cli("cache", "clean", env=moto_env)
        proc = subprocess.Popen(
            [*console_script(), "pull", "lab/crash:1"],
            env={**os.environ, **moto_env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        time.sleep(rng.uniform(0.05, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        finished = proc.returncode != -9
        outcomes["finished" if finished else "killed"] += 1
        published_are_whole(cache)
    print(f"kill -9 trials: {outcomes}")
    final = run_cli("pull", "lab/crash:1", env=moto_env)
    assert final.returncode == 0, final.stderr
    assert Path(final.stdout.strip()).read_bytes() == data
    assert outcomes["killed"] >= KILL_TRIALS // 2  # most trials really were interrupted
    leftovers = [p.name for p in (cache / "v1" / "tmp").iterdir() if p.suffix == ".partial"]
    assert leftovers == []  # dead writers' temps were cleaned by the next pull


def test_locks_off_concurrent_pulls_publish_only_whole_files(
    moto_env: dict[str, str], tmp_path: Path
) -> None:
    image = tmp_path / "img.sif"
    data = write_random(image, 16 * MiB, seed=22)
    assert run_cli("push", str(image), "lab/nolock:1", env=moto_env).returncode == 0
    env = {**os.environ, **moto_env, "REGISTRY_CLIENT_CACHE_LOCKING": "0"}
    procs = [
        subprocess.Popen(
            [*console_script(), "pull", "--json", "lab/nolock:1"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [o[1] for o in outs]
    results = [json.loads(o[0]) for o in outs]
    assert len({r["path"] for r in results}) == 1
    assert Path(results[0]["path"]).read_bytes() == data
    cache = Path(moto_env["REGISTRY_CLIENT_CACHE_DIR"])
    assert published_are_whole(cache) == [hashlib.sha256(data).hexdigest()]
    assert not list((cache / "v1" / "locks").glob("*.lock"))  # no lock was even tried
    assert [p for p in (cache / "v1" / "tmp").iterdir()] == []
