"""A failed request during a push costs that request: parts and segments are retried one by
one, never the whole object. Counted through the fault proxy, against real servers."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from swiftclient.exceptions import ClientException

from registry_client import service
from registry_client.config import RemoteConfig
from registry_client.context import Context
from registry_client.errors import RemoteUnavailable
from registry_client.names import parse_image_ref
from registry_client.retry import RetryPolicy
from tests.conftest import new_bucket
from tests.support.backend_contract import write_random
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.helpers import (
    azure_options,
    azure_service,
    make_context,
    s3_client,
    s3_options,
)

pytestmark = pytest.mark.servers
MiB = 1024 * 1024
PARTS = 5


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RetryPolicy, "delay", lambda self, attempt, error: 0.0)


@dataclass
class Rig:
    proxy: FaultProxy
    ctx: Context  # its remote `lab` goes through the proxy
    marker: str  # in the request target of every part / segment PUT
    third: str  # in the request target of the third one
    leftovers: Callable[[], list[str]]  # objects, pending uploads or segments left behind
    method: str = "PUT"  # of a part upload


SERVERS = {"moto": "moto_server", "azure": "azurite_server"}


# Not GCS: its part uploads name the object in the request body, where a fault cannot
# pick the third one; the contract suite retries its steps through the wrapper instead.
@pytest.fixture(params=["swift-s3api", "moto", "swift", "azure"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    kind = request.param
    server = request.getfixturevalue(SERVERS.get(kind, "swift_server"))
    upstream = f"http://127.0.0.1:{server.port}" if kind == "azure" else server.s3_endpoint
    with FaultProxy(upstream) as proxy:
        if kind == "azure":
            remote, found = _azure_rig(request, server, proxy)
            ctx = make_context(tmp_path, {"lab": remote}, default="lab", part_size=5 * MiB)
            yield Rig(proxy, ctx, *found)
            return
        if kind == "swift":
            from swiftclient.client import Connection

            container = f"rc-{uuid.uuid4().hex[:12]}"
            admin = Connection(server.auth_url, server.user, server.key, retries=0)
            admin.put_container(container)
            options = {
                "bucket": container,
                "auth_url": f"{proxy.url}/auth/v1.0",  # tempauth answers with the proxy's URL
                "user": server.user,
                "key": server.key,
            }
            remote = RemoteConfig("lab", "swift", options)

            def leftovers() -> list[str]:
                names = [o["name"] for o in admin.get_container(container)[1]]
                try:
                    return names + [
                        o["name"] for o in admin.get_container(f"{container}_segments")[1]
                    ]
                except ClientException:
                    return names

            # segment PUTs carry /slo/ (the manifest goes to the container itself)
            found = ("/slo/", "/00000002", leftovers)
        else:
            bucket = new_bucket(server)
            options = {**s3_options(server, bucket), "endpoint_url": proxy.url}
            remote = RemoteConfig("lab", "s3", options)
            client = s3_client(server)

            def leftovers() -> list[str]:
                objects = client.list_objects_v2(Bucket=bucket).get("Contents", [])
                uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
                return [o["Key"] for o in objects] + [u["UploadId"] for u in uploads]

            found = ("partNumber=", "partNumber=3", leftovers)  # ...&partNumber=N, last
        ctx = make_context(tmp_path, {"lab": remote}, default="lab", part_size=5 * MiB)
        yield Rig(proxy, ctx, *found)


def _azure_rig(
    request: pytest.FixtureRequest, server: Any, proxy: FaultProxy
) -> tuple[RemoteConfig, tuple[str, str, Callable[[], list[str]], str]]:
    """Azure blocks through the proxy: `comp=block&` (not `comp=blocklist`, the commit);
    the third block's id holds `-00002-`, `LTAwMDAy` in base64."""
    container = request.getfixturevalue("azure_container")
    options = {**azure_options(server, container), "account_url": f"{proxy.url}/{server.account}"}
    blobs = azure_service(server).get_container_client(container)

    def leftovers() -> list[str]:
        return [b.name for b in blobs.list_blobs()]

    return RemoteConfig("lab", "azure", options), ("comp=block&", "LTAwMDAy", leftovers, "PUT")


def _part_puts(rig: Rig) -> list[str]:
    return [
        r.target for r in rig.proxy.stats.log if r.method == rig.method and rig.marker in r.target
    ]


def test_one_503_on_one_part_costs_one_extra_part_upload(rig: Rig, tmp_path: Path) -> None:
    data = write_random(tmp_path / "img.sif", PARTS * 5 * MiB - 123, seed=30)
    fault = rig.proxy.add_fault(Fault.status(503, method=rig.method, path=rig.third))
    pushed = service.push(rig.ctx, str(tmp_path / "img.sif"), parse_image_ref("lab/app:1"))
    puts = _part_puts(rig)
    assert fault.fired == 1
    assert len(puts) == PARTS + 1, puts  # exactly one extra part upload
    assert sum(rig.third in t for t in puts) == 2  # and it is the part that failed
    pulled = service.pull(rig.ctx, parse_image_ref("lab/app:1"))
    assert pulled.sha256 == pushed.sha256
    assert Path(pulled.path).read_bytes() == data


def test_a_part_failing_every_time_gives_up_once_and_leaves_nothing(
    rig: Rig, tmp_path: Path
) -> None:
    write_random(tmp_path / "img.sif", PARTS * 5 * MiB, seed=31)
    rig.proxy.add_fault(Fault.status(503, times=None, method=rig.method, path=rig.third))
    with pytest.raises(RemoteUnavailable) as caught:
        service.push(rig.ctx, str(tmp_path / "img.sif"), parse_image_ref("lab/app:1"))
    attempts = RetryPolicy().attempts
    assert str(caught.value).count("gave up after") == 1
    assert f"gave up after {attempts} attempts" in str(caught.value)
    assert sum(rig.third in t for t in _part_puts(rig)) == attempts
    assert rig.leftovers() == []
