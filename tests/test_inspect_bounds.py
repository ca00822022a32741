"""`inspect` reads a bounded amount whatever a SIF header claims, locally and remotely.

A header that declares 4.2 million descriptors made inspect read a 2.45 GB table in one
go (one ranged GET for a remote image). The header is checked first now: nothing past
it is read, and the answer says why the image is not one we read.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from registry_client import sif
from registry_client.config import RemoteConfig
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.helpers import (
    run_cli,
    run_cli_measured,
    s3_client,
    s3_options,
    write_config,
)

HUGE = 4_200_000  # descriptors: a 2.45 GB table
GiB = 1024**3


def _hostile_header(path: Path, declared_size: int) -> bytes:
    """A small valid SIF whose header declares HUGE descriptors, in a sparse file of
    `declared_size` bytes (so the table fits the file and only the count gives it away)."""
    sif.make_test_sif(path, 4096, seed=2)
    with path.open("r+b") as fh:
        fields = list(sif.HEADER_STRUCT.unpack(fh.read(sif.HEADER_STRUCT.size)))
        # launch, magic, version, arch, uuid, ctime, mtime, dfree, dtotal, doff, dsize, ...
        fields[7], fields[8] = HUGE - 1, HUGE
        fields[10] = HUGE * sif.DESCRIPTOR_STRUCT.size
        header = sif.HEADER_STRUCT.pack(*fields)
        fh.seek(0)
        fh.write(header)
        fh.truncate(declared_size)
    with path.open("rb") as fh:
        return fh.read(64 * 1024)


@pytest.mark.slow  # inspects a 2 GiB sparse image
def test_a_local_header_declaring_a_huge_table_is_not_read(tmp_path: Path) -> None:
    image = tmp_path / "hostile.sif"
    _hostile_header(image, 2 * GiB + HUGE * sif.DESCRIPTOR_STRUCT.size // 4)
    result, peak = run_cli_measured("inspect", "--json", str(image))
    print(f"\npeak RSS of inspect: {peak} MiB")
    assert result.returncode == 0 and peak < 150, result.stderr
    data = json.loads(result.stdout)
    assert data["sif"] is None
    assert data["sif_error"] == f"{HUGE} descriptors declared; readers stop at 4096"


@pytest.mark.servers
def test_a_remote_header_declaring_a_huge_table_costs_one_small_get(
    tmp_path: Path, moto_server: Any
) -> None:
    """The store says the object is 3 GiB (the fault proxy rewrites its HEAD): the table
    would fit; the header alone is read."""
    bucket = f"rc-{uuid.uuid4().hex[:12]}"
    s3_client(moto_server).create_bucket(Bucket=bucket)
    head = _hostile_header(tmp_path / "hostile.sif", 3 * GiB)
    s3_client(moto_server).put_object(Bucket=bucket, Key="lab/huge:1.sif", Body=head)
    with FaultProxy(moto_server.s3_endpoint) as proxy:
        proxy.add_fault(Fault.headers({"Content-Length": str(3 * GiB)}, times=None, method="HEAD"))
        options = {**s3_options(moto_server, bucket), "endpoint_url": proxy.url}
        cfg = write_config(tmp_path / "c.toml", {"lab": RemoteConfig("lab", "s3", options)}, "lab")
        result = run_cli("--config", str(cfg), "inspect", "--json", "lab/huge:1")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["sif_error"].startswith(f"{HUGE} descriptors declared")
        asked = [
            int(b) - int(a) + 1
            for r in proxy.stats.log
            if r.method == "GET" and r.range
            for a, b in [re.fullmatch(r"bytes=(\d+)-(\d+)", r.range).groups()]  # type: ignore[union-attr]
        ]
        assert asked and max(asked) <= 4096, asked  # the header, not a 2.45 GB table


def test_names_in_the_image_are_printed_escaped(tmp_path: Path) -> None:
    image = tmp_path / "names.sif"
    sif.write_sif(
        image,
        [sif.SifObject(sif.DataType.GENERIC_JSON, b"{}", name="x\x1b[2J\nerror: forged")],
    )
    result = run_cli("inspect", str(image))
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\nerror: forged" not in result.stdout
    assert "x\\x1b[2J\\nerror: forged" in result.stdout
