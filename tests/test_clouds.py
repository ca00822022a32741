"""Azure Blob Storage (Azurite) and Google Cloud Storage (fake-gcs-server) end to end.

The CLI over direct azure:// and gs:// URLs with each ecosystem's environment variables,
named remotes, secrets kept out of output, a missing extra, and verification with each
store's own checksums: Azure's Content-MD5 and the md5s our block ids record, GCS's
md5Hash and (composite objects) CRC32C. Tampered objects fail with exit 4 and nothing
published.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from registry_client import service
from registry_client.acquire import Wanted, acquire
from registry_client.backends.azure import AzureBackend
from registry_client.backends.base import ObjectInfo
from registry_client.backends.gcs import GcsBackend
from registry_client.config import RemoteConfig
from registry_client.errors import IntegrityError
from registry_client.transfer import TransferSettings
from tests.support.backend_contract import write_random
from tests.support.helpers import (
    azure_options,
    azure_service,
    gcs_client,
    gcs_options,
    make_context,
    run_cli,
)

pytestmark = pytest.mark.servers
MiB = 1024 * 1024


def azure_env(server: Any, tmp_path: Path) -> dict[str, str]:
    return {
        "AZURE_STORAGE_CONNECTION_STRING": server.connection_string,
        "REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "cache"),
    }


def gcs_env(server: Any, tmp_path: Path) -> dict[str, str]:
    return {
        "STORAGE_EMULATOR_HOST": server.endpoint,
        "REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "cache"),
    }


def ok(*args: str, env: dict[str, str]) -> str:
    result = run_cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


# -- the commands over direct URLs ------------------------------------------------------


@pytest.mark.parametrize("store", ["azure", "gs"])
def test_commands_over_direct_urls(
    store: str,
    request: pytest.FixtureRequest,
    sample_sif: Path,
    tmp_path: Path,
) -> None:
    if store == "azure":
        server = request.getfixturevalue("azurite_server")
        bucket = request.getfixturevalue("azure_container")
        env = azure_env(server, tmp_path)
    else:
        server = request.getfixturevalue("gcs_server")
        bucket = request.getfixturevalue("gcs_bucket")
        env = gcs_env(server, tmp_path)
    # A 1 MiB part size: the 3 MiB image goes up as blocks / a composite object.
    cfg = tmp_path / "config.toml"
    cfg.write_text("[transfer]\npart_size = 1048576\n")
    env["REGISTRY_CLIENT_CONFIG"] = str(cfg)
    ref = f"{store}://{bucket}/hpc/lab/app:1"
    digest = ok("push", str(sample_sif), ref, env=env).strip()
    assert digest == "sha256:" + hashlib.sha256(sample_sif.read_bytes()).hexdigest()

    pulled = json.loads(ok("pull", "--json", ref, env=env))
    assert Path(pulled["path"]).read_bytes() == sample_sif.read_bytes()
    assert {"size", "etag", "sha256"} <= set(pulled["verified"])

    rows = json.loads(ok("ls", "--json", f"{store}://{bucket}/hpc", env=env))
    assert [r["ref"] for r in rows] == [ref] and rows[0]["digest"] == digest
    inspected = json.loads(ok("inspect", "--json", ref, env=env))
    assert inspected["digest"] == digest and inspected["sif"]["descriptors"]

    ok("tag", ref, f"{store}://{bucket}/hpc/lab/app:2", env=env)
    again = json.loads(
        ok("pull", "--json", "--force", f"{store}://{bucket}/hpc/lab/app:2", env=env)
    )
    assert Path(again["path"]).read_bytes() == sample_sif.read_bytes()

    ok("rm", ref, env=env)
    gone = run_cli("pull", "--force", ref, env=env)
    assert gone.returncode == 3 and "Traceback" not in gone.stderr


def _row(ndjson: str) -> dict[str, Any]:
    """The one image row of `copy --json` (NDJSON: rows, then a summary)."""
    rows = [json.loads(line) for line in ndjson.splitlines() if line.strip()]
    (row,) = [r for r in rows if "ref" in r]
    return row


def test_copy_between_clouds(
    azurite_server: Any,
    azure_container: str,
    gcs_server: Any,
    gcs_bucket: str,
    sample_sif: Path,
    tmp_path: Path,
) -> None:
    """azure:// → gs:// and back with `copy`: pulled verified from one, pushed to the other."""
    env = {**azure_env(azurite_server, tmp_path), **gcs_env(gcs_server, tmp_path)}
    az, gs = f"azure://{azure_container}/lab/app:1", f"gs://{gcs_bucket}/lab/app:1"
    digest = ok("push", str(sample_sif), az, env=env).strip()
    first = _row(ok("copy", "--json", az, gs, env=env))
    assert first["status"] == "copied" and f"sha256:{first['sha256']}" == digest
    again = _row(ok("copy", "--json", az, gs, env=env))
    assert again["status"] == "skipped"  # the destination already holds that sha256
    back = f"azure://{azure_container}/lab/app:2"
    ok("copy", gs, back, env=env)
    pulled = ok("pull", "--force", back, env=env).strip()
    assert Path(pulled).read_bytes() == sample_sif.read_bytes()


def test_named_remotes_hide_secrets(
    azurite_server: Any, azure_container: str, gcs_server: Any, gcs_bucket: str, tmp_path: Path
) -> None:
    env = {"REGISTRY_CLIENT_CONFIG": str(tmp_path / "cfg.toml")}
    (tmp_path / "cfg.toml").write_text("")
    az = azure_options(azurite_server, azure_container)
    ok(
        "remote", "add", "cloud", f"azure://{azure_container}/pre",
        "--option", f"account_url={az['account_url']}",
        "--option", f"account_key={az['account_key']}",
        env=env,
    )  # fmt: skip
    ok(
        "remote", "add", "gcp", f"gs://{gcs_bucket}",
        "--option", f"endpoint_url={gcs_server.endpoint}", "--option", "anonymous=true",
        env=env,
    )  # fmt: skip
    listed = ok("remote", "ls", "--json", env=env)
    assert azurite_server.account_key not in listed
    remotes = {r["name"]: r for r in json.loads(listed)}
    assert remotes["cloud"]["type"] == "azure" and remotes["cloud"]["account_key"] == "***"
    assert remotes["gcp"]["type"] == "gcs" and remotes["gcp"]["bucket"] == gcs_bucket
    assert os.stat(tmp_path / "cfg.toml").st_mode & 0o077 == 0

    write_random(tmp_path / "a.sif", 1000)
    for name in ("cloud", "gcp"):
        ok("push", str(tmp_path / "a.sif"), f"{name}:lab/a:1", env=env)
        out = ok("pull", f"{name}:lab/a:1", env=env)
        assert Path(out.strip()).read_bytes() == (tmp_path / "a.sif").read_bytes()
    blob = azure_service(azurite_server).get_blob_client(azure_container, "pre/lab/a:1.sif")
    assert blob.get_blob_properties().metadata["part_size"]  # Azure names hold no "-"


def test_wrong_azure_key_is_auth_error_without_the_key(
    azurite_server: Any, azure_container: str, tmp_path: Path
) -> None:
    bad_key = base64.b64encode(b"not the key" * 6).decode()
    env = {
        "AZURE_STORAGE_ACCOUNT_URL": azurite_server.blob_endpoint,
        "AZURE_STORAGE_ACCOUNT": azurite_server.account,
        "AZURE_STORAGE_KEY": bad_key,
        "REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "c"),
    }
    result = run_cli("-v", "pull", f"azure://{azure_container}/lab/x:1", env=env)
    assert result.returncode == 5, result.stderr
    assert bad_key not in result.stderr + result.stdout
    assert bad_key[:20] not in result.stderr


def test_azure_sas_token_from_the_environment(
    azurite_server: Any, azure_container: str, tmp_path: Path
) -> None:
    """A container SAS (what a site hands a burst node) instead of the account key."""
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(
        azurite_server.account,
        azure_container,
        account_key=azurite_server.account_key,
        permission=ContainerSasPermissions(read=True, write=True, list=True, delete=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )
    env = {
        "AZURE_STORAGE_ACCOUNT_URL": azurite_server.blob_endpoint,
        "AZURE_STORAGE_SAS_TOKEN": sas,
        "REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "c"),
    }
    data = write_random(tmp_path / "a.sif", 70_000, seed=3)
    ok("push", str(tmp_path / "a.sif"), f"azure://{azure_container}/lab/sas:1", env=env)
    out = ok("pull", "--json", f"azure://{azure_container}/lab/sas:1", env=env)
    assert Path(json.loads(out)["path"]).read_bytes() == data
    listed = run_cli("-v", "ls", f"azure://{azure_container}", env=env)
    assert listed.returncode == 0 and sas.split("sig=")[1][:10] not in listed.stderr


def test_gcs_credentials_file_problems_are_exit_5(tmp_path: Path) -> None:
    """GOOGLE_APPLICATION_CREDENTIALS or credentials_file naming a bad file: exit 5, and the
    file's contents never shown."""
    secret = '{"type": "service_account", "private_key": "TOPSECRET"}'
    (tmp_path / "sa.json").write_text(secret)
    env = {"REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "c")}
    for extra in (
        {"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "missing.json")},
        {"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "sa.json")},
    ):
        result = run_cli("pull", "gs://some-bucket/lab/x:1", env={**env, **extra})
        assert result.returncode == 5, result.stderr
        assert "TOPSECRET" not in result.stderr and "Traceback" not in result.stderr
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(
        f'[remotes.gcp]\ntype = "gcs"\nbucket = "b-1"\ncredentials_file = "{tmp_path}/sa.json"\n'
    )
    result = run_cli("pull", "gcp:lab/x:1", env={**env, "REGISTRY_CLIENT_CONFIG": str(cfg)})
    assert result.returncode == 5 and "credentials_file" in result.stderr
    assert "TOPSECRET" not in result.stderr


def test_no_azure_credentials_is_exit_5_with_hint(tmp_path: Path) -> None:
    env = {"REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "c")}
    result = run_cli("pull", "azure://images/lab/x:1", env=env)
    assert result.returncode == 5
    assert "AZURE_STORAGE_CONNECTION_STRING" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("url", "extra", "package"), [("azure://c-1", "azure", "azure"), ("gs://b-1", "gcs", "google")]
)
def test_missing_extra_names_it(url: str, extra: str, package: str, tmp_path: Path) -> None:
    # An empty package of that name first on the path hides the installed SDK.
    (tmp_path / "shadow" / package).mkdir(parents=True)
    (tmp_path / "shadow" / package / "__init__.py").write_text("")
    env = {
        "PYTHONPATH": str(tmp_path / "shadow"),
        "REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "c"),
    }
    result = run_cli("pull", f"{url}/lab/x:1", env=env)
    assert result.returncode == 2, result.stderr
    assert f"registry-client[{extra}]" in result.stderr and "Traceback" not in result.stderr


# -- verification with the stores' own checksums ----------------------------------------


@pytest.fixture
def azure_ctx(azurite_server: Any, azure_container: str, tmp_path: Path) -> Any:
    remote = RemoteConfig("az", "azure", azure_options(azurite_server, azure_container))
    return make_context(
        tmp_path, {"az": remote}, "az", part_size=MiB,
        transfer=TransferSettings(chunk_size=MiB, concurrency=3),
    )  # fmt: skip


def _pull(ctx: Any, ref: str) -> Any:
    from registry_client.names import parse_image_ref

    return service.pull(ctx, parse_image_ref(ref), force=True)


def _published(ctx: Any) -> list[Path]:
    return [p for p in ctx.cache.root.rglob("*") if p.is_file() and p.suffix == ".sif"]


def test_azure_block_ids_verify_when_the_blob_md5_is_gone(
    azure_ctx: Any, azurite_server: Any, azure_container: str, tmp_path: Path
) -> None:
    data = write_random(tmp_path / "f.sif", 3 * MiB + 17, seed=4)
    service.push(azure_ctx, str(tmp_path / "f.sif"), _ref("az:lab/b:1"))
    blob = azure_service(azurite_server).get_blob_client(azure_container, "lab/b:1.sif")
    from azure.storage.blob import ContentSettings

    blob.set_http_headers(ContentSettings(content_type="application/octet-stream"))
    assert blob.get_blob_properties().content_settings.content_md5 is None
    backend = AzureBackend(azure_container, options=azure_options(azurite_server, azure_container))
    plan = backend.etag_plan(backend.stat("lab/b:1.sif"))
    assert plan.verifiable and plan.schemes == [[MiB, MiB, MiB, 17]], plan.description
    result = _pull(azure_ctx, "az:lab/b:1")
    assert "etag" in result.verified and Path(result.path).read_bytes() == data


def test_azure_block_that_lies_about_its_md5_fails(
    azure_ctx: Any, azurite_server: Any, azure_container: str, tmp_path: Path
) -> None:
    """Another writer stages other bytes under an id that records the original md5."""
    from azure.storage.blob import BlobBlock

    data = write_random(tmp_path / "f.sif", 2 * MiB, seed=5)
    blob = azure_service(azurite_server).get_blob_client(azure_container, "lab/evil:1.sif")
    first = hashlib.md5(data[:MiB]).hexdigest()
    second = hashlib.md5(data[MiB:]).hexdigest()
    ids = [f"rc1-00000000-00000-{first}", f"rc1-00000000-00001-{second}"]
    blob.stage_block(ids[0], data[:MiB])
    blob.stage_block(ids[1], os.urandom(MiB))  # not the bytes its id claims
    blob.commit_block_list([BlobBlock(block_id=i) for i in ids])
    with pytest.raises(IntegrityError, match="does not match"):
        _pull(azure_ctx, "az:lab/evil:1")
    assert _published(azure_ctx) == []


def test_azure_wrong_content_md5_fails_and_foreign_blob_warns(
    azure_ctx: Any, azurite_server: Any, azure_container: str
) -> None:
    import smart_open

    service_client = azure_service(azurite_server)
    container = service_client.get_container_client(azure_container)
    # Written the way a streaming tool writes (smart_open: blocks, no MD5 anywhere).
    data = os.urandom(300_000)
    with smart_open.open(
        f"azure://{azure_container}/lab/foreign:1.sif",
        "wb",
        transport_params={"client": service_client},
    ) as fh:
        fh.write(data)
    warnings: list[str] = []
    azure_ctx.reporter.warn = warnings.append
    result = _pull(azure_ctx, "az:lab/foreign:1")
    assert Path(result.path).read_bytes() == data and result.verified == ("size",)
    assert any("cannot be verified" in w for w in warnings)

    from azure.storage.blob import ContentSettings

    bad = container.upload_blob("lab/bad:1.sif", data)
    bad.set_http_headers(ContentSettings(content_md5=bytearray(hashlib.md5(b"x").digest())))
    with pytest.raises(IntegrityError, match="does not match"):
        _pull(azure_ctx, "az:lab/bad:1")


@pytest.fixture
def gcs_ctx(gcs_server: Any, gcs_bucket: str, tmp_path: Path) -> Any:
    remote = RemoteConfig("gcp", "gcs", gcs_options(gcs_server, gcs_bucket))
    return make_context(
        tmp_path, {"gcp": remote}, "gcp", part_size=MiB,
        transfer=TransferSettings(chunk_size=MiB, concurrency=3),
    )  # fmt: skip


def _ref(text: str) -> Any:
    from registry_client.names import parse_image_ref

    return parse_image_ref(text)


def test_gcs_composite_verified_by_crc32c(
    gcs_ctx: Any, gcs_server: Any, gcs_bucket: str, tmp_path: Path
) -> None:
    """Real GCS gives composite objects no md5Hash (the emulator does): without it the
    pull checks the CRC32C, and other bytes fail."""
    data = write_random(tmp_path / "f.sif", 40 * MiB + 5, seed=6)
    composed: list[tuple[str, int]] = []

    class Counting(GcsBackend):
        def _compose(self, name: str, sources: list[str], meta: Any) -> Any:
            composed.append((name.rsplit("/", 1)[-1], len(sources)))
            return super()._compose(name, sources, meta)

    pusher = Counting(gcs_bucket, options=gcs_options(gcs_server, gcs_bucket))
    pusher.put("lab/c:1.sif", str(tmp_path / "f.sif"), {}, part_size=MiB, concurrency=4)
    # 41 parts: two composes of 32 and 9, then the image from those two
    assert sorted(composed) == [("c0-00000", 32), ("c0-00001", 9), ("c:1.sif", 2)]
    names = [b.name for b in gcs_client(gcs_server).list_blobs(gcs_bucket)]
    assert names == ["lab/c:1.sif"]  # the temporary parts are gone

    class CompositeAsOnGcs(GcsBackend):
        def stat(self, key: str) -> ObjectInfo:
            info = super().stat(key)
            crc_only = {"crc32c": info.checksums["crc32c"]}
            return ObjectInfo(info.key, info.size, info.etag, info.metadata, None, crc_only)

    backend = CompositeAsOnGcs(gcs_bucket, options=gcs_options(gcs_server, gcs_bucket))
    info = backend.stat("lab/c:1.sif")
    plan = backend.etag_plan(info)
    assert plan.algorithm == "crc32c"
    got = acquire(
        gcs_ctx, Wanted("c", ("c", "1")), lambda: service.bucket_download(backend, info, None)
    )
    assert got.checks == ("size", "etag") and got.path.read_bytes() == data

    bad = ObjectInfo(info.key, info.size, info.etag, {}, None, {"crc32c": "00000000"})
    with pytest.raises(IntegrityError, match="does not match"):
        acquire(
            gcs_ctx, Wanted("c", ("c", "2")), lambda: service.bucket_download(backend, bad, None)
        )


def test_gcs_object_changed_behind_the_server_fails(
    gcs_ctx: Any, gcs_server: Any, gcs_bucket: str, tmp_path: Path
) -> None:
    """Bytes that no longer match the object's md5Hash (bit rot, a hostile store): the
    emulator keeps objects as plain files, so flip bytes in one behind its back."""
    write_random(tmp_path / "f.sif", 3 * MiB, seed=9)
    service.push(gcs_ctx, str(tmp_path / "f.sif"), _ref("gcp:lab/rot:1"))
    stored = gcs_server.workdir / "data" / gcs_bucket / "lab" / "rot:1.sif"
    with open(stored, "r+b") as fh:
        fh.seek(2 * MiB)
        fh.write(b"\0" * 16)
    with pytest.raises(IntegrityError, match="does not match"):
        _pull(gcs_ctx, "gcp:lab/rot:1")
    assert _published(gcs_ctx) == []
