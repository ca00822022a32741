"""migrate and copy against the real loopback servers: Swift (native and s3api) and moto.

Each test builds its own containers/buckets; images are pushed with the CLI or written by
other tools (the swift CLI's SLOs, boto3's managed multipart uploads) and then migrated with
the CLI, streamed: the node cache never receives them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from registry_client.config import RemoteConfig
from tests.conftest import new_bucket
from tests.support.backend_contract import write_random
from tests.support.helpers import console_script, run_cli, s3_client, s3_options, write_config

pytestmark = pytest.mark.servers
MiB = 1024 * 1024
PART = 5 * MiB  # small parts, so a few MiB make multipart uploads and SLOs


def swift_conn(server: Any) -> Any:
    import swiftclient

    return swiftclient.Connection(server.auth_url, server.user, server.key)


def swift_remote(name: str, server: Any, container: str) -> RemoteConfig:
    options = {
        "container": container,
        "auth_url": server.auth_url,
        "user": server.user,
        "key": server.key,
    }
    return RemoteConfig(name, "swift", options)


def new_container(server: Any) -> str:
    name = f"rc-{uuid.uuid4().hex[:12]}"
    swift_conn(server).put_container(name)
    return name


Outcome = tuple[int, list[dict[str, Any]], dict[str, Any], str]


def outcome(code: int, stdout: str, stderr: str) -> Outcome:
    """(exit code, image rows, summary, stderr) of a `--json` migrate or copy."""
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    rows = [r for r in lines if "ref" in r]  # then the summary, then an error object if any
    summary = next((r["summary"] for r in lines if "summary" in r), {})
    return code, rows, summary, stderr


class World:
    """Named remotes in one config, and helpers to run the CLI against them."""

    def __init__(self, tmp: Path, remotes: dict[str, RemoteConfig]) -> None:
        self.tmp = tmp
        self.remotes = remotes
        cfg = write_config(tmp / "config.toml", remotes, next(iter(remotes)))
        with open(cfg, "a") as fh:
            fh.write(f"\n[transfer]\npart_size = {PART}\n")
        self.cache = tmp / "cache"
        self.env = {
            "REGISTRY_CLIENT_CONFIG": str(cfg),
            "REGISTRY_CLIENT_CACHE_DIR": str(self.cache),
        }

    def cli(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env={**self.env, **kw.pop("env", {})}, **kw)

    def push(self, ref: str, size: int, seed: int, labels: tuple[str, ...] = ()) -> Path:
        path = self.tmp / f"img-{seed}-{size}.sif"
        if not path.exists():
            write_random(path, size, seed=seed)
        extra = [a for label in labels for a in ("--label", label)]
        done = self.cli("push", str(path), ref, *extra)
        assert done.returncode == 0, done.stderr
        return path

    def migrate(self, *args: str, command: str = "migrate") -> Outcome:
        done = self.cli(command, "--json", *args, timeout=300)
        return outcome(done.returncode, done.stdout, done.stderr)

    def pulled(self, ref: str) -> bytes:
        done = self.cli("pull", "--force", ref)
        assert done.returncode == 0, done.stderr
        return Path(done.stdout.strip()).read_bytes()

    def cached_images(self) -> list[Path]:
        return [p for p in self.cache.rglob("*") if p.is_file() and p.stat().st_size > 64 * 1024]


def by_ref(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["ref"]: r for r in rows}


@pytest.fixture
def swift_to_s3(swift_server: Any, moto_server: Any, tmp_path: Path) -> World:
    return World(
        tmp_path,
        {
            "onprem": swift_remote("onprem", swift_server, new_container(swift_server)),
            "cloud": RemoteConfig("cloud", "s3", s3_options(moto_server, new_bucket(moto_server))),
        },
    )


def test_swift_to_s3_streamed_verified_and_idempotent(swift_to_s3: World, moto_server: Any) -> None:
    w = swift_to_s3
    images = {"lab/app:1": 12 * MiB + 3, "lab/app:2": 1000, "bio/tool:latest": 1}
    files = {
        ref: w.push(f"onprem:{ref}", size, i, ("team=bio",))
        for i, (ref, size) in enumerate(images.items())
    }
    code, rows, summary, err = w.migrate("onprem", "cloud")
    assert code == 0, err
    got = by_ref(rows)
    assert {r["status"] for r in rows} == {"copied"} and set(got) == set(images)
    assert summary["copied"] == 3 and summary["exit_code"] == 0
    assert "sha256" in got["lab/app:1"]["verified"] and "etag" in got["lab/app:1"]["verified"]
    assert not w.cached_images(), "a migration must not fill the node cache"
    for ref, path in files.items():
        assert w.pulled(f"cloud:{ref}") == path.read_bytes()
    # Metadata kept: labels with migrated-from beside them, the original push date.
    head = s3_client(moto_server).head_object(
        Bucket=w.remotes["cloud"].location, Key="lab/app:1.sif"
    )
    labels = json.loads(head["Metadata"]["labels"])
    assert labels == {"team": "bio", "migrated-from": "onprem"}
    ls_src = {r["ref"]: r for r in json.loads(w.cli("ls", "--json", "onprem").stdout)}
    ls_dst = {r["ref"]: r for r in json.loads(w.cli("ls", "--json", "cloud").stdout)}
    assert ls_dst["cloud:lab/app:1"]["pushed"] == ls_src["onprem:lab/app:1"]["pushed"]
    # Again: nothing to do, decided without reading an image.
    code, again, _, err = w.migrate("onprem", "cloud")
    assert code == 0, err
    assert {r["status"] for r in again} == {"skipped"}


def test_s3_to_swift_and_a_foreign_multipart_upload(
    swift_server: Any, moto_server: Any, tmp_path: Path
) -> None:
    """boto3's managed upload (8 MiB parts, no metadata of ours) into native Swift."""
    from boto3.s3.transfer import TransferConfig

    bucket = new_bucket(moto_server)
    w = World(
        tmp_path,
        {
            "cloud": RemoteConfig("cloud", "s3", s3_options(moto_server, bucket)),
            "onprem": swift_remote("onprem", swift_server, new_container(swift_server)),
        },
    )
    ours = w.push("cloud:lab/ours:1", 11 * MiB, 1)
    foreign = tmp_path / "foreign.sif"
    write_random(foreign, 20 * MiB + 5, seed=7)
    config = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB)
    sregistry = {"Metadata": {"client": "sregistry", "sizemb": "20"}}  # what sregistry-cli writes
    s3_client(moto_server).upload_file(
        str(foreign), bucket, "lab/theirs:1.sif", ExtraArgs=sregistry, Config=config
    )
    code, rows, _, err = w.migrate("cloud", "onprem")
    assert code == 0, err
    assert {r["status"] for r in rows} == {"copied"}
    assert w.pulled("onprem:lab/ours:1") == ours.read_bytes()
    assert w.pulled("onprem:lab/theirs:1") == foreign.read_bytes()
    head = swift_conn(swift_server).head_object(w.remotes["onprem"].location, "lab/theirs:1.sif")
    assert head["x-object-meta-sha256"] == by_ref(rows)["lab/theirs:1"]["sha256"]
    assert head["x-object-meta-client"] == "sregistry" and head["x-object-meta-sizemb"] == "20"
    assert json.loads(head["x-object-meta-labels"]) == {"migrated-from": "cloud"}
    code, again, _, _ = w.migrate("cloud", "onprem")
    assert code == 0 and {r["status"] for r in again} == {"skipped"}


def test_file_to_s3_and_a_foreign_swift_slo(
    swift_server: Any, moto_server: Any, tmp_path: Path
) -> None:
    """A directory remote, then an SLO the swift CLI's service wrote (no metadata of ours)."""
    from swiftclient.service import SwiftService, SwiftUploadObject

    container = new_container(swift_server)
    w = World(
        tmp_path,
        {
            "disk": RemoteConfig("disk", "file", {"path": str(tmp_path / "disk")}),
            "onprem": swift_remote("onprem", swift_server, container),
            "cloud": RemoteConfig("cloud", "s3", s3_options(moto_server, new_bucket(moto_server))),
        },
    )
    local = w.push("disk:lab/local:1", 6 * MiB, 3)
    code, rows, _, err = w.migrate("disk", "cloud")
    assert code == 0 and [r["status"] for r in rows] == ["copied"], err
    assert w.pulled("cloud:lab/local:1") == local.read_bytes()

    slo = tmp_path / "slo.sif"
    write_random(slo, 13 * MiB + 11, seed=9)
    options = {
        "auth": swift_server.auth_url,
        "user": swift_server.user,
        "key": swift_server.key,
        "auth_version": "1.0",
        "segment_size": 4 * MiB,
        "use_slo": True,
    }
    with SwiftService(options) as service:
        results = list(
            service.upload(container, [SwiftUploadObject(str(slo), object_name="lab/slo:1.sif")])
        )
    assert all(r["success"] for r in results)
    code, rows, _, err = w.migrate("onprem", "cloud")
    assert code == 0, err
    row = by_ref(rows)["lab/slo:1"]
    assert row["status"] == "copied" and "etag" in row["verified"]
    assert w.pulled("cloud:lab/slo:1") == slo.read_bytes()


def test_a_corrupt_source_is_reported_and_the_others_are_copied(
    swift_server: Any, moto_server: Any, tmp_path: Path
) -> None:
    """A wrong recorded sha256 and an SLO whose segment was overwritten in place: both fail
    with exit 4, nothing of them reaches the destination, every other image is copied."""
    container = new_container(swift_server)
    bucket = new_bucket(moto_server)
    w = World(
        tmp_path,
        {
            "onprem": swift_remote("onprem", swift_server, container),
            "cloud": RemoteConfig("cloud", "s3", s3_options(moto_server, bucket)),
        },
    )
    good = w.push("onprem:lab/good:1", 7 * MiB, 1)
    w.push("onprem:lab/lying:1", 6 * MiB, 2)
    w.push("onprem:lab/damaged:1", 11 * MiB, 3)
    conn = swift_conn(swift_server)
    conn.post_object(container, "lab/lying:1.sif", {"X-Object-Meta-Sha256": "ab" * 32})
    manifest = json.loads(
        conn.get_object(container, "lab/damaged:1.sif", query_string="multipart-manifest=get")[1]
    )
    seg_container, _, seg_name = manifest[1]["name"].lstrip("/").partition("/")
    conn.put_object(seg_container, seg_name, os.urandom(manifest[1]["bytes"]))
    code, rows, summary, err = w.migrate("onprem", "cloud")
    got = by_ref(rows)
    assert code == 4, err
    assert got["lab/good:1"]["status"] == "copied"
    for ref in ("lab/lying:1", "lab/damaged:1"):
        assert got[ref]["status"] == "failed" and got[ref]["exit_code"] == 4, got[ref]
    assert summary["failed"] == 2 and summary["copied"] == 1
    assert "error:" in err and "Traceback" not in err
    client = s3_client(moto_server)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert keys == {"lab/good:1.sif"}
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert w.pulled("cloud:lab/good:1") == good.read_bytes()


def test_dry_run_shows_the_plan_and_writes_nothing(swift_to_s3: World, moto_server: Any) -> None:
    w = swift_to_s3
    w.push("onprem:lab/new:1", 6 * MiB, 1)
    w.push("onprem:lab/same:1", 1000, 2)
    w.push("cloud:lab/same:1", 1000, 2)
    w.push("onprem:lab/clash:1", 2000, 3)
    w.push("cloud:lab/clash:1", 2000, 4)
    code, rows, summary, err = w.migrate("--dry-run", "onprem", "cloud")
    plan = {r["ref"]: r["action"] for r in rows}
    assert plan == {"lab/new:1": "copy", "lab/same:1": "skip", "lab/clash:1": "conflict"}
    assert {r["status"] for r in rows} == {"planned"}
    assert summary["bytes_to_copy"] == 6 * MiB
    assert code == 1, err  # the conflict
    bucket = w.remotes["cloud"].location
    listed = s3_client(moto_server).list_objects_v2(Bucket=bucket).get("Contents", [])
    assert {o["Key"] for o in listed} == {"lab/same:1.sif", "lab/clash:1.sif"}


def test_conflicts_are_reported_not_overwritten_unless_asked(swift_to_s3: World) -> None:
    w = swift_to_s3
    ours = w.push("onprem:lab/app:1", 3000, 1)
    theirs = w.push("cloud:lab/app:1", 3000, 2)
    code, rows, _, err = w.migrate("onprem", "cloud")
    assert code == 1 and rows[0]["status"] == "conflict", err
    assert "--overwrite" in err
    assert w.pulled("cloud:lab/app:1") == theirs.read_bytes()
    code, rows, _, err = w.migrate("--overwrite", "onprem", "cloud")
    assert code == 0 and rows[0]["status"] == "copied", err
    assert w.pulled("cloud:lab/app:1") == ours.read_bytes()


def test_shards_split_the_images_between_machines(swift_to_s3: World) -> None:
    w = swift_to_s3
    refs = [f"c{i % 3}/n{i}:{tag}" for i in range(12) for tag in ("1", "latest")]
    for i, ref in enumerate(refs):
        w.push(f"onprem:{ref}", 100 + i, i)
    seen: list[str] = []
    for k in range(3):
        code, rows, _, err = w.migrate("--shard", f"{k}/3", "onprem", "cloud")
        assert code == 0, err
        shard = [r["ref"] for r in rows]
        names = {ref.partition(":")[0] for ref in shard}
        assert all(f"{n}:latest" in shard and f"{n}:1" in shard for n in names)  # tags together
        seen += shard
    assert sorted(seen) == sorted(refs)  # every image once
    bad = w.cli("migrate", "--shard", "3/3", "onprem", "cloud")
    assert bad.returncode == 2 and "error:" in bad.stderr


def test_collections_on_both_sides_and_shared_content(swift_to_s3: World) -> None:
    """`onprem:bio cloud:lab` puts bio's images into lab; two tags of one content are
    uploaded once, the second is a copy made at the destination."""
    w = swift_to_s3
    same = w.push("onprem:bio/tool:1", 7 * MiB, 1)
    w.push("onprem:bio/tool:latest", 7 * MiB, 1)
    w.push("onprem:other/x:1", 100, 2)
    code, rows, _, err = w.migrate("onprem:bio", "cloud:lab")
    assert code == 0, err
    got = by_ref(rows)
    assert set(got) == {"bio/tool:1", "bio/tool:latest"}
    assert {r["dst"] for r in rows} == {"lab/tool:1.sif", "lab/tool:latest.sif"}
    hows = sorted(r["how"] for r in rows)
    assert hows == ["copied at the destination", "streamed"], rows
    assert sum(r["sent"] for r in rows) == 7 * MiB
    assert w.pulled("cloud:lab/tool:latest") == same.read_bytes()
    assert w.cli("pull", "cloud:bio/tool:1").returncode == 3


def test_server_side_copies_within_one_store(
    swift_server: Any, moto_server: Any, tmp_path: Path
) -> None:
    """Two buckets of one S3 endpoint, two containers of one Swift account: no bytes flow
    through the client; the copies' ETags equal the sources'."""
    w = World(
        tmp_path,
        {
            "a": RemoteConfig("a", "s3", s3_options(moto_server, new_bucket(moto_server))),
            "b": RemoteConfig("b", "s3", s3_options(moto_server, new_bucket(moto_server))),
            "x": swift_remote("x", swift_server, new_container(swift_server)),
            "y": swift_remote("y", swift_server, new_container(swift_server)),
        },
    )
    big = w.push("a:lab/big:1", 12 * MiB, 1)
    w.push("a:lab/small:1", 1000, 2)
    w.push("x:lab/big:1", 12 * MiB, 1)
    w.push("x:lab/small:1", 1000, 2)
    for src, dst in (("a", "b"), ("x", "y")):
        code, rows, _, err = w.migrate(src, dst)
        assert code == 0, err
        assert {r["how"] for r in rows} == {"server-side"} and sum(r["sent"] for r in rows) == 0
        assert w.pulled(f"{dst}:lab/big:1") == big.read_bytes()
        labels = json.loads(w.cli("ls", "--json", dst).stdout)[0]["labels"]
        assert labels == {"migrated-from": src}


def test_copy_streams_one_image_with_the_same_rules(swift_to_s3: World) -> None:
    w = swift_to_s3
    image = w.push("onprem:lab/app:1", 6 * MiB, 1)
    code, rows, _, err = w.migrate("onprem:lab/app:1", "cloud:lab/app:2", command="copy")
    assert code == 0 and rows[0]["status"] == "copied" and rows[0]["how"] == "streamed", err
    assert not w.cached_images()
    assert w.pulled("cloud:lab/app:2") == image.read_bytes()
    code, rows, _, _ = w.migrate("onprem:lab/app:1", "cloud:lab/app:2", command="copy")
    assert code == 0 and rows[0]["status"] == "skipped"
    w.push("onprem:lab/app:3", 100, 5)
    code, rows, _, _ = w.migrate("onprem:lab/app:3", "cloud:lab/app:2", command="copy")
    assert code == 1 and rows[0]["status"] == "conflict"


def test_progress_lines_without_a_terminal(swift_to_s3: World) -> None:
    w = swift_to_s3
    w.push("onprem:lab/app:1", 6 * MiB, 1)
    done = w.cli("migrate", "onprem", "cloud", env={"REGISTRY_CLIENT_PROGRESS_INTERVAL": "0.2"})
    assert done.returncode == 0, done.stderr
    assert "1/1 images, 6.3 of 6.3 MB" in done.stderr
    assert done.stdout.startswith("copied")


# -- killed, then run again ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["s3", "swift"])
def test_killed_mid_way_then_run_again(
    kind: str, swift_server: Any, moto_server: Any, tmp_path: Path
) -> None:
    """kill -9 at about half the bytes; the rerun resumes the interrupted uploads, leaves
    no incomplete multipart upload or unnamed segment behind, and uploads in all at most
    the total plus the largest image (counted on the wire by a proxy)."""
    from tests.support.faultproxy import Fault, FaultProxy

    sizes = [12 * MiB + 1, 11 * MiB, 16 * MiB + 7, 9 * MiB, 3 * MiB, 2000]
    src_bucket = new_bucket(moto_server)
    slow = FaultProxy(moto_server.s3_endpoint).start()  # reads slow enough to kill mid-way
    slow.add_fault(Fault.slow(6 * MiB, times=None, method="GET", has_range=True))
    if kind == "s3":
        up = FaultProxy(swift_server.s3_endpoint).start()
        dst_bucket = new_bucket(swift_server)
        dst = RemoteConfig(
            "cloud", "s3", {**s3_options(swift_server, dst_bucket), "endpoint_url": up.url}
        )
    else:
        up = FaultProxy(swift_server.auth_url.split("/auth")[0]).start()
        dst_bucket = new_container(swift_server)
        url, token = swift_conn(swift_server).get_auth()
        path = url.split("://", 1)[1].partition("/")[2]
        dst = RemoteConfig(
            "cloud",
            "swift",
            {"container": dst_bucket, "storage_url": f"{up.url}/{path}", "auth_token": token},
        )
    try:
        src = RemoteConfig(
            "src", "s3", {**s3_options(moto_server, src_bucket), "endpoint_url": slow.url}
        )
        w = World(tmp_path, {"src": src, "cloud": dst})
        direct = World(
            tmp_path / "direct",
            {"src": RemoteConfig("src", "s3", s3_options(moto_server, src_bucket))},
        )
        files = {f"lab/i{i}:1": direct.push(f"src:lab/i{i}:1", n, i) for i, n in enumerate(sizes)}
        total = sum(sizes)
        proc = subprocess.Popen(
            [*console_script(), "migrate", "--json", "--jobs", "2", "src", "cloud"],
            env={**os.environ, **w.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while up.stats.sent_bytes.get("PUT", 0) < total // 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the migration never got half way"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        first = up.stats.sent_bytes.get("PUT", 0)
        left = parts_left_behind(kind, swift_server, dst_bucket)
        slow.clear_faults()
        code, rows, _, err = w.migrate("src", "cloud")
        assert code == 0, err
        assert {r["status"] for r in rows} <= {"copied", "skipped"}
        if left:  # parts of an interrupted upload were there: they are kept, not sent again
            assert any(r.get("how") == "resumed" for r in rows), rows
        sent = up.stats.sent_bytes.get("PUT", 0)
        print(
            f"\nkilled at {first / MiB:.1f} MiB of {total / MiB:.1f}; "
            f"{sent / MiB:.1f} MiB sent in all"
        )
        assert sent <= total + max(sizes) + MiB  # + manifests and request framing
        for ref, path in files.items():
            assert w.pulled(f"cloud:{ref}") == path.read_bytes()
        assert_nothing_pending(kind, swift_server, dst_bucket)
    finally:
        slow.stop()
        up.stop()


def parts_left_behind(kind: str, swift_server: Any, bucket: str) -> int:
    """Parts of incomplete uploads at the destination: S3 multipart parts, or Swift
    segments no manifest names."""
    if kind == "s3":
        client = s3_client(swift_server)
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return sum(
            len(
                client.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get(
                    "Parts", []
                )
            )
            for u in uploads
        ) + len(uploads)
    conn = swift_conn(swift_server)
    named: set[str] = set()
    for obj in conn.get_container(bucket)[1]:
        head = conn.head_object(bucket, obj["name"])
        if head.get("x-static-large-object"):
            manifest = conn.get_object(bucket, obj["name"], query_string="multipart-manifest=get")
            named |= {e["name"].lstrip("/").partition("/")[2] for e in json.loads(manifest[1])}
    try:
        stored = {o["name"] for o in conn.get_container(f"{bucket}_segments")[1]}
    except Exception:  # noqa: BLE001 - no segments container: nothing left
        return 0
    return len(stored - named)


def assert_nothing_pending(kind: str, swift_server: Any, bucket: str) -> None:
    assert parts_left_behind(kind, swift_server, bucket) == 0


def test_a_stalled_source_read_is_stopped_and_retried(
    moto_server: Any, swift_server: Any, tmp_path: Path
) -> None:
    """A source that stops sending mid-body: the read is cut after stall_timeout and
    retried from the byte it reached; the image is copied, verified."""
    from tests.support.faultproxy import Fault, FaultProxy

    bucket = new_bucket(moto_server)
    with FaultProxy(moto_server.s3_endpoint) as proxy:
        proxy.add_fault(Fault.stall(MiB, 60, times=1, method="GET", has_range=True))
        src = RemoteConfig(
            "src", "s3", {**s3_options(moto_server, bucket), "endpoint_url": proxy.url}
        )
        w = World(
            tmp_path,
            {"src": src, "dst": swift_remote("dst", swift_server, new_container(swift_server))},
        )
        with open(w.env["REGISTRY_CLIENT_CONFIG"], "a") as fh:
            fh.write("stall_timeout = 1\n")  # in the [transfer] table World wrote last
        image = w.push("src:lab/app:1", 3 * MiB, 1)
        started = time.monotonic()
        code, rows, _, err = w.migrate("src", "dst")
        took = time.monotonic() - started
        assert proxy.stats.faults.get("stall") == 1
    assert code == 0 and rows[0]["status"] == "copied", err
    assert took < 30, f"a 60 s stall was waited out ({took:.1f} s)"
    assert w.pulled("dst:lab/app:1") == image.read_bytes()


def test_ctrl_c_aborts_the_uploads_in_flight(
    swift_server: Any, moto_server: Any, tmp_path: Path
) -> None:
    """Ctrl-C mid-migration: exit 130, one line, and no incomplete upload left behind."""
    from tests.support.faultproxy import Fault, FaultProxy

    src_bucket, dst_bucket = new_bucket(moto_server), new_bucket(swift_server)
    direct = World(
        tmp_path / "direct", {"src": RemoteConfig("src", "s3", s3_options(moto_server, src_bucket))}
    )
    for i in range(4):
        direct.push(f"src:lab/i{i}:1", 12 * MiB + i, i)
    with FaultProxy(moto_server.s3_endpoint) as slow:
        slow.add_fault(Fault.slow(4 * MiB, times=None, method="GET", has_range=True))
        src = RemoteConfig(
            "src", "s3", {**s3_options(moto_server, src_bucket), "endpoint_url": slow.url}
        )
        w = World(
            tmp_path,
            {
                "src": src,
                "cloud": RemoteConfig("cloud", "s3", s3_options(swift_server, dst_bucket)),
            },
        )
        proc = subprocess.Popen(
            [*console_script(), "migrate", "src", "cloud"],
            env={**os.environ, **w.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        client = s3_client(swift_server)
        deadline = time.monotonic() + 60
        while not client.list_multipart_uploads(Bucket=dst_bucket).get("Uploads"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert not client.list_multipart_uploads(Bucket=dst_bucket).get("Uploads")
