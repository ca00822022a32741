"""migrate: on-prem Swift → S3 (moto), verified, idempotent; search across remotes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from registry_client.config import RemoteConfig
from tests.conftest import new_bucket
from tests.support.backend_contract import write_random
from tests.support.helpers import run_cli, s3_client, s3_options, write_config

pytestmark = pytest.mark.servers
MiB = 1024 * 1024


@pytest.fixture
def two_remotes(swift_server: Any, moto_server: Any, tmp_path: Path) -> dict[str, str]:
    import swiftclient

    container = f"onprem-{new_bucket(moto_server)[3:]}"
    swiftclient.Connection(
        swift_server.auth_url, swift_server.user, swift_server.key
    ).put_container(container)
    onprem = RemoteConfig(
        "onprem",
        "swift",
        {
            "container": container,
            "auth_url": swift_server.auth_url,
            "user": swift_server.user,
            "key": swift_server.key,
        },
    )
    cloud_bucket = new_bucket(moto_server)
    cloud = RemoteConfig("cloud", "s3", s3_options(moto_server, cloud_bucket))
    cfg = write_config(tmp_path / "config.toml", {"onprem": onprem, "cloud": cloud}, "onprem")
    with open(cfg, "a") as fh:
        fh.write("\n[transfer]\npart_size = 5242880\n")
    return {
        "REGISTRY_CLIENT_CONFIG": str(cfg),
        "REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "c"),
        "BUCKET": cloud_bucket,
    }


def test_migrate_swift_to_s3_verified_and_idempotent(
    two_remotes: dict[str, str], tmp_path: Path, moto_server: Any
) -> None:
    images = {"lab/app:1": 7 * MiB + 3, "lab/app:2": 1000, "bio/tool:latest": 200}
    for i, (ref, size) in enumerate(images.items()):
        write_random(tmp_path / f"{i}.sif", size, seed=i)
        assert run_cli("push", str(tmp_path / f"{i}.sif"), ref, env=two_remotes).returncode == 0
    first = run_cli("migrate", "--json", "onprem", "cloud", env=two_remotes)
    assert first.returncode == 0, first.stderr
    rows = {r["ref"]: r for r in json.loads(first.stdout)}
    assert set(rows) == set(images) and {r["status"] for r in rows.values()} == {"copied"}
    for i, ref in enumerate(images):
        pulled = run_cli("pull", "--force", f"cloud:{ref}", env=two_remotes)
        assert pulled.returncode == 0, pulled.stderr
        assert Path(pulled.stdout.strip()).read_bytes() == (tmp_path / f"{i}.sif").read_bytes()
    head = s3_client(moto_server).head_object(Bucket=two_remotes["BUCKET"], Key="lab/app:1.sif")
    assert head["Metadata"]["sha256"] == rows["lab/app:1"]["sha256"]
    again = json.loads(run_cli("migrate", "--json", "onprem", "cloud", env=two_remotes).stdout)
    assert {r["status"] for r in again} == {"skipped"}


def test_migrate_one_collection(two_remotes: dict[str, str], tmp_path: Path) -> None:
    write_random(tmp_path / "a.sif", 100)
    for ref in ("lab/a:1", "bio/b:1"):
        assert run_cli("push", str(tmp_path / "a.sif"), ref, env=two_remotes).returncode == 0
    rows = json.loads(run_cli("migrate", "--json", "onprem:bio", "cloud", env=two_remotes).stdout)
    assert [r["ref"] for r in rows] == ["bio/b:1"]


def test_search_across_remotes(two_remotes: dict[str, str], tmp_path: Path) -> None:
    write_random(tmp_path / "a.sif", 100)
    assert (
        run_cli("push", str(tmp_path / "a.sif"), "onprem:lab/blast:2", env=two_remotes).returncode
        == 0
    )
    assert (
        run_cli("push", str(tmp_path / "a.sif"), "cloud:lab/blast:3", env=two_remotes).returncode
        == 0
    )
    found = json.loads(run_cli("search", "--json", "blast", env=two_remotes).stdout)
    assert sorted(r["ref"] for r in found) == ["cloud:lab/blast:3", "onprem:lab/blast:2"]
    none = run_cli("search", "--json", "zzz", env=two_remotes)
    assert none.returncode == 0 and json.loads(none.stdout) == []
