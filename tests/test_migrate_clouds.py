"""migrate: on-prem Swift → Azure Blob Storage and → Google Cloud Storage, verified end to end.

The source holds what other tools leave in a Swift cluster: a Static Large Object written
by hand through the native API (segments plus a manifest, no metadata of ours) and a
multipart upload made through Swift's S3 API. Each is pulled and verified against Swift's
own ETags, pushed as Azure blocks / a GCS composite object (1 MiB parts), and read back:
the destination's sha256 must be the source's, and a pull from the cloud must give the
same bytes. A second run skips both.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from swiftclient.client import Connection

from registry_client.config import RemoteConfig
from tests.support.helpers import (
    azure_options,
    gcs_options,
    run_cli,
    s3_client,
    write_config,
)

pytestmark = pytest.mark.servers
MiB = 1024 * 1024


def _foreign_swift_images(server: Any, container: str, seed: int) -> dict[str, bytes]:
    """A hand-made SLO and an S3-API multipart object in one Swift container."""
    import random

    rnd = random.Random(seed)
    conn = Connection(server.auth_url, server.user, server.key, retries=0)
    conn.put_container(container)
    conn.put_container(f"{container}-parts")
    segments = [rnd.randbytes(MiB + 1000 * i) for i in range(3)]
    manifest = []
    for i, seg in enumerate(segments):
        etag = conn.put_object(f"{container}-parts", f"slo/{i:03d}", seg)
        manifest.append({"path": f"/{container}-parts/slo/{i:03d}", "etag": etag})
    conn.put_object(
        container, "lab/slo:1.sif", json.dumps(manifest), query_string="multipart-manifest=put"
    )
    parts = [rnd.randbytes(2 * MiB) for _ in range(2)] + [rnd.randbytes(777)]
    s3 = s3_client(server)
    upload = s3.create_multipart_upload(Bucket=container, Key="bio/mpu:2.sif")["UploadId"]
    done = [
        {
            "PartNumber": n,
            "ETag": s3.upload_part(
                Bucket=container, Key="bio/mpu:2.sif", UploadId=upload, PartNumber=n, Body=body
            )["ETag"],
        }
        for n, body in enumerate(parts, start=1)
    ]
    s3.complete_multipart_upload(
        Bucket=container, Key="bio/mpu:2.sif", UploadId=upload, MultipartUpload={"Parts": done}
    )
    assert s3.head_object(Bucket=container, Key="bio/mpu:2.sif")["ETag"].endswith('-3"')
    return {"lab/slo:1": b"".join(segments), "bio/mpu:2": b"".join(parts)}


def _rows(ndjson: str) -> list[dict[str, Any]]:
    """The image rows of `migrate --json` (one object per line, then a summary)."""
    lines = [json.loads(line) for line in ndjson.splitlines() if line.strip()]
    return [r for r in lines if "ref" in r]


@pytest.fixture(params=["azure", "gcs"])
def cloud(request: pytest.FixtureRequest) -> RemoteConfig:
    if request.param == "azure":
        server = request.getfixturevalue("azurite_server")
        container = request.getfixturevalue("azure_container")
        return RemoteConfig("cloud", "azure", azure_options(server, container))
    server = request.getfixturevalue("gcs_server")
    bucket = request.getfixturevalue("gcs_bucket")
    return RemoteConfig("cloud", "gcs", gcs_options(server, bucket))


def test_migrate_swift_to_cloud_verified_and_idempotent(
    swift_server: Any, cloud: RemoteConfig, tmp_path: Path
) -> None:
    container = f"onprem-{uuid.uuid4().hex[:10]}"
    images = _foreign_swift_images(swift_server, container, seed=len(cloud.type))
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
    cfg = write_config(tmp_path / "config.toml", {"onprem": onprem, "cloud": cloud}, "onprem")
    with open(cfg, "a") as fh:
        fh.write("\n[transfer]\npart_size = 1048576\n")
    env = {"REGISTRY_CLIENT_CONFIG": str(cfg), "REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "c")}

    first = run_cli("migrate", "--json", "onprem", "cloud", env=env)
    assert first.returncode == 0, first.stderr + first.stdout
    rows = {r["ref"]: r for r in _rows(first.stdout)}
    assert set(rows) == set(images) and {r["status"] for r in rows.values()} == {"copied"}
    for ref, data in images.items():
        assert rows[ref]["sha256"] == hashlib.sha256(data).hexdigest()
        shown = json.loads(run_cli("inspect", "--json", f"cloud:{ref}", env=env).stdout)
        assert shown["digest"] == f"sha256:{rows[ref]['sha256']}"  # recorded in the cloud
        pulled = run_cli("pull", "--json", "--force", f"cloud:{ref}", env=env)
        assert pulled.returncode == 0, pulled.stderr
        result = json.loads(pulled.stdout)
        assert Path(result["path"]).read_bytes() == data
        assert {"size", "etag", "sha256"} <= set(result["verified"])

    again = run_cli("migrate", "--json", "onprem", "cloud", env=env)
    assert again.returncode == 0, again.stderr
    assert {r["status"] for r in _rows(again.stdout)} == {"skipped"}
