"""library:// against a faithful Library API on 127.0.0.1 (303 to a presigned URL elsewhere)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry_client import sif
from registry_client.errors import AuthError, IntegrityError, InvalidReference, NotFound
from registry_client.fetch import FetchOptions, pull_fetcher, search
from registry_client.names import parse_reference
from registry_client.transfer import TransferSettings
from tests.support.fixtures_library import TOKEN, LibraryFixture, LibraryImage, sample_library
from tests.support.helpers import make_context, run_cli

MiB = 1024 * 1024


@pytest.fixture
def library(tmp_path: Path) -> Iterator[LibraryFixture]:
    with sample_library(tmp_path) as server:
        yield server


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, library: LibraryFixture):
    monkeypatch.setenv("REGISTRY_CLIENT_LIBRARY_TOKEN", TOKEN)
    # Small chunks so that a few-MiB image takes several parallel ranged GETs.
    return make_context(tmp_path, transfer=TransferSettings(chunk_size=MiB, concurrency=4))


def pull(ctx, library: LibraryFixture, ref: str, **kwargs):
    options = FetchOptions(arch="amd64", library_url=library.url)
    return pull_fetcher(ctx, parse_reference(ref), options=options, **kwargs)


def published(ctx) -> list[Path]:
    return sorted((ctx.cache.base / "sif" / "sha256").glob("*"))


def test_pull_follows_303_without_the_token_and_verifies(ctx, library):
    image = library.images["lab/tools/app:1.0"]
    result = pull(ctx, library, "library://lab/tools/app:1.0")
    assert Path(result.path).read_bytes() == image.data
    assert result.sha256 == image.sha256 and not result.cached
    assert {"size", "sha256"} <= set(result.verified)
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in library.api.log)
    store = library.store.requests_to("/objects/")
    assert len(store) >= 4, "a 3 MiB image in 1 MiB chunks is fetched in parallel ranges"
    assert all("authorization" not in r.headers for r in store)
    assert all(r.headers.get("range", "").startswith("bytes=") for r in store)
    assert library.api.requests_to("/v1/images/")[0].query == {"arch": "amd64"}


def test_second_pull_is_a_cache_hit_without_download(ctx, library):
    first = pull(ctx, library, "library://lab/tools/app:1.0")
    before = len(library.store.log)
    again = pull(ctx, library, "library://lab/tools/app:1.0")
    assert again.cached and again.path == first.path
    assert len(library.store.log) == before
    offline = pull(ctx, library, "library://lab/tools/app:1.0", offline=True)
    assert offline.path == first.path


def test_short_names_are_resolved_by_the_server(ctx, library):
    result = pull(ctx, library, "library://alpine")
    assert result.sha256 == library.images["library/default/alpine:latest"].sha256
    # As scs-library-client: the path goes as written; the Library expands it.
    assert library.api.log[0].path == "/v1/images/alpine:latest"
    assert library.api.requests_to("/v1/imagefile/")[0].path == "/v1/imagefile/alpine:latest"
    assert pull(ctx, library, "library://alpine").cached


def test_images_named_by_sif_uuid_are_checked_by_size_and_uuid(ctx, library, tmp_path):
    image = tmp_path / "old.sif"
    sif.make_test_sif(image, 200_000, seed=11)
    old = library.add("lab/tools/old:1", LibraryImage(image.read_bytes(), by_uuid=True))
    assert old.hash.startswith("sif.")
    warnings: list[str] = []
    ctx.reporter.warn = warnings.append  # type: ignore[method-assign]
    result = pull(ctx, library, "library://lab/tools/old:1")
    assert result.sha256 == old.sha256 and "sif-uuid" in result.verified
    assert any("no sha256" in w for w in warnings)
    assert pull(ctx, library, "library://lab/tools/old:1").cached

    class WrongUuid(LibraryImage):
        @property
        def hash(self) -> str:
            return "sif.00000000-1111-2222-3333-444444444444"

    library.add("lab/tools/liar:1", WrongUuid(image.read_bytes()))
    with pytest.raises(IntegrityError, match="UUID"):
        pull(ctx, library, "library://lab/tools/liar:1")


def test_the_fixture_takes_the_scheme_in_any_case(library):
    import requests

    url = f"{library.url}/v1/images/lab/tools/app:1.0?arch=amd64"
    for scheme in ("BEARER", "bearer", "Bearer"):
        answer = requests.get(url, headers={"Authorization": f"{scheme} {TOKEN}"}, timeout=10)
        assert answer.status_code == 200, scheme
    assert (
        requests.get(url, headers={"Authorization": f"Basic {TOKEN}"}, timeout=10).status_code
        == 401
    )


def test_pinned_hash_tag_is_checked_and_served_offline(ctx, library):
    image = library.images["lab/tools/app:1.0"]
    ref = f"library://lab/tools/app:sha256.{image.sha256}"
    with pytest.raises(NotFound):
        pull(ctx, library, ref, offline=True)
    assert pull(ctx, library, ref).sha256 == image.sha256
    assert pull(ctx, library, ref, offline=True).cached


def test_not_found_and_bad_token(ctx, library, monkeypatch):
    with pytest.raises(NotFound, match="not found"):
        pull(ctx, library, "library://lab/tools/missing:1.0")
    with pytest.raises(NotFound):  # there is no arm64 build of this tag
        pull_fetcher(
            ctx,
            parse_reference("library://lab/tools/app:1.0"),
            options=FetchOptions(arch="arm64", library_url=library.url),
        )
    monkeypatch.setenv("REGISTRY_CLIENT_LIBRARY_TOKEN", "wrong")
    with pytest.raises(AuthError) as err:
        pull(ctx, library, "library://lab/tools/app:1.0")
    assert "wrong" not in str(err.value) and TOKEN not in str(err.value)
    assert published(ctx) == []


def test_corrupt_bytes_publish_nothing(ctx, library):
    library.corrupt = True
    with pytest.raises(IntegrityError, match="sha256"):
        pull(ctx, library, "library://lab/tools/app:1.0")
    assert published(ctx) == []
    assert list((ctx.cache.base / "tmp").glob("*.partial")) == []


@pytest.mark.parametrize("mode", ["no-redirect", "no-ranges"])
def test_servers_without_redirect_or_ranges(ctx, library, mode):
    library.redirect = mode != "no-redirect"
    library.store_ranges = False
    image = library.images["lab/tools/app:1.0"]
    result = pull(ctx, library, "library://lab/tools/app:1.0")
    assert Path(result.path).read_bytes() == image.data


def test_retries_503_and_resumes_broken_reads(tmp_path, ctx, library):
    ctx = make_context(
        tmp_path / "big-chunks", transfer=TransferSettings(chunk_size=3 * MiB, concurrency=2)
    )
    library.unavailable = 2
    library.broken_reads = 3
    image = library.images["lab/tools/app:1.0"]
    result = pull(ctx, library, "library://lab/tools/app:1.0")
    assert Path(result.path).read_bytes() == image.data
    starts = [int(r.headers["range"][6:].partition("-")[0]) for r in library.store.log]
    assert len(starts) == 1 + 2 + 3  # probe, two chunks, one retry per cut read
    # A cut read goes on from the last whole block it got, not from the chunk's start.
    assert [s for s in starts if s not in (0, 3 * MiB)]


def test_invalid_references_fail_before_any_request(ctx, library):
    for ref in (
        "library://a/b/c/d",
        "library://Lab/app",
        "library://lab/app:bad tag!",
        "library://lab//app",
    ):
        with pytest.raises(InvalidReference):
            pull(ctx, library, ref)
    assert library.api.log == []


def test_search(ctx, library):
    rows = search(ctx, "tools", FetchOptions(library_url=library.url))
    assert [r["ref"] for r in rows] == ["library://lab/tools/app:1.0"]
    assert library.api.log[-1].query == {"value": "tools"}


# -- the installed CLI ------------------------------------------------------------------------


def cli(tmp_path: Path, library: LibraryFixture, *args: str, token: str = TOKEN):
    env = {"REGISTRY_CLIENT_LIBRARY_URL": library.url, "REGISTRY_CLIENT_LIBRARY_TOKEN": token}
    return run_cli("--cache-dir", str(tmp_path / "cli-cache"), *args, env=env)


def test_cli_pull_prints_only_the_path_and_maps_exit_codes(tmp_path, library):
    proc = cli(tmp_path, library, "pull", "--arch", "amd64", "library://lab/tools/app:1.0")
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip())
    assert proc.stdout == f"{path}\n" and path.is_absolute()
    assert path.read_bytes() == library.images["lab/tools/app:1.0"].data
    inspect = run_cli("--json", "inspect", str(path))
    assert json.loads(inspect.stdout)["sif"]["descriptors"]

    missing = cli(tmp_path, library, "pull", "--arch", "amd64", "library://lab/tools/nope")
    assert missing.returncode == 3 and missing.stdout == ""
    denied = cli(
        tmp_path,
        library,
        "pull",
        "--arch",
        "amd64",
        "library://lab/tools/app:1.0",
        token="bad-token",
    )
    assert denied.returncode == 5 and "bad-token" not in denied.stderr
    library.corrupt = True
    corrupt = cli(
        tmp_path, library, "pull", "--force", "--arch", "amd64", "library://lab/tools/app:1.0"
    )
    assert corrupt.returncode == 4 and corrupt.stdout == ""
    assert corrupt.stderr.startswith("error: ")
    assert cli(tmp_path, library, "pull", "library://../etc").returncode == 2


def test_cli_search(tmp_path, library):
    proc = cli(tmp_path, library, "--json", "search", "tools")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["ref"] == "library://lab/tools/app:1.0"


def copy_to_bucket(ctx, library: LibraryFixture, ref: str, bucket: Path, **options):
    """`copy REF file://BUCKET/lab/app:1` through the API; the one row it reports."""
    from registry_client.migrate import Options, copy_fetched

    rows: list[dict] = []
    fetch = FetchOptions(arch="amd64", library_url=library.url)
    dst = f"file://{bucket}/lab/app:1"
    copy_fetched(ctx, parse_reference(ref), dst, Options(**options), fetch, rows.append)
    return rows[0]


@pytest.mark.parametrize("ranges", [True, False])
def test_copy_streams_the_download_to_a_bucket_verified(ctx, library, tmp_path, ranges):
    """The image goes from the Library's download (one plain stream, smart_open) to the
    bucket without the node cache; the token never reaches the store it redirects to."""
    library.store_ranges = ranges
    image = library.images["lab/tools/app:1.0"]
    row = copy_to_bucket(ctx, library, "library://lab/tools/app:1.0", tmp_path / "b")
    assert row["status"] == "copied" and row["how"] == "streamed from the registry's download"
    assert row["sha256"] == image.sha256 and {"size", "sha256"} <= set(row["verified"])
    assert (tmp_path / "b" / "lab" / "app:1.sif").read_bytes() == image.data
    assert published(ctx) == []  # nothing went through the cache
    assert all("authorization" not in r.headers for r in library.store.requests_to("/objects/"))
    again = copy_to_bucket(ctx, library, "library://lab/tools/app:1.0", tmp_path / "b")
    assert again["status"] == "skipped" and len(library.store.requests_to("/objects/")) == 1


def test_copy_of_a_corrupt_download_writes_nothing(ctx, library, tmp_path):
    library.corrupt = True
    row = copy_to_bucket(ctx, library, "library://lab/tools/app:1.0", tmp_path / "b")
    assert row["status"] == "failed" and row["exit_code"] == 4 and "sha256" in row["reason"]
    assert not list((tmp_path / "b").rglob("*.sif"))
