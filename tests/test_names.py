"""References: the grammar, and that no reference can escape a prefix."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry_client.errors import InvalidReference
from registry_client.names import FetcherRef, ImageRef, parse_reference, ref_from_key

HEX = "a" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lab/app", ImageRef("lab", "app", "latest")),
        ("lab/app:1.2", ImageRef("lab", "app", "1.2")),
        ("prod:lab/app:1.2", ImageRef("lab", "app", "1.2", remote="prod")),
        (f"lab/app:1.2@sha256:{HEX}", ImageRef("lab", "app", "1.2", HEX)),
        (f"lab/app@sha256:{HEX}", ImageRef("lab", "app", "latest", HEX)),
        ("s3://bucket/lab/app:1", ImageRef("lab", "app", "1", None, None, "s3", "bucket")),
        (
            "s3://bucket/site/x/lab/app:1",
            ImageRef("lab", "app", "1", None, None, "s3", "bucket", "site/x/"),
        ),
        (
            "swift://Images_1/lab/app",
            ImageRef("lab", "app", "latest", None, None, "swift", "Images_1"),
        ),
        (
            "file:///srv/images/lab/app:v2",
            ImageRef("lab", "app", "v2", None, None, "file", "/srv/images"),
        ),
        ("a.b-c_d/x.y:T_1.0-rc", ImageRef("a.b-c_d", "x.y", "T_1.0-rc")),
        (
            "azure://images-1/hpc/lab/app:1",
            ImageRef("lab", "app", "1", None, None, "azure", "images-1", "hpc/"),
        ),
        (
            "gs://my_bucket-2/lab/app",
            ImageRef("lab", "app", "latest", None, None, "gs", "my_bucket-2"),
        ),
    ],
)
def test_valid(text: str, expected: ImageRef) -> None:
    assert parse_reference(text) == expected


def test_fetchers_are_kept_as_text() -> None:
    assert parse_reference("docker://alpine:3") == FetcherRef("docker", "alpine:3")
    assert parse_reference("library://u/c/n:t") == FetcherRef("library", "u/c/n:t")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "app",
        "lab/../app",
        "../lab/app",
        "/etc/passwd",
        "lab/app/extra",
        "Lab/app",
        "lab/app:",
        "lab/app:-x",
        "lab/app:.x",
        "lab//app",
        "lab/app\x00",
        "lab/app\n",
        "lab/ app",
        "lab/app:" + "t" * 200,
        "l" * 2000 + "/app",
        "lab/app@sha256:xyz",
        "lab/app@md5:" + "a" * 32,
        "ftp://x/lab/app",
        "s3://b/app",
        "file://rel/lab/app",
        "s3://../lab/app",
        "file:///srv/../lab/app",
        "lab/ａpp",
        "bad remote:lab/app",
        "lab/app..x",
        "lab/-app",
        "lab/app-",
        "s3://UPPER/lab/app",
        "docker://../x",
        "azure://Images/lab/app",  # Azure containers are lower-case
        "azure://a--b/lab/app",  # no double hyphens
        "azure://ab/lab/app",  # at least 3 characters
        "azure://my_c/lab/app",  # no underscores
        "gs://-bucket/lab/app",
        "gs://Bucket/lab/app",
        "gcs://bucket/lab/app",  # the scheme is gs://
    ],
)
def test_invalid(text: str) -> None:
    with pytest.raises(InvalidReference):
        parse_reference(text)


def test_key_is_sregistry_naming() -> None:
    assert parse_reference("s3://bkt/p/lab/app:1").key() == "p/lab/app:1.sif"
    assert parse_reference("lab/app").key(".simg") == "lab/app:latest.simg"


def test_ref_from_key_round_trip() -> None:
    assert ref_from_key("lab/app:1.2.sif") == ImageRef("lab", "app", "1.2")
    assert ref_from_key("lab/app:1.2.simg") == ImageRef("lab", "app", "1.2")
    assert ref_from_key("lab/app.txt") is None
    assert ref_from_key("x/lab/app:1.sif") is None


def _stays_inside(ref: ImageRef) -> bool:
    root = "/cache/root"
    for part in (ref.key(), f"{ref.collection}/{ref.name}/{ref.tag}.json"):
        joined = os.path.normpath(os.path.join(root, part))
        if not joined.startswith(root + "/") or "\x00" in part:
            return False
    return True


def _check(text: str) -> None:
    try:
        ref = parse_reference(text)
    except InvalidReference:
        return
    if isinstance(ref, ImageRef):
        assert _stays_inside(ref)
        assert ".." not in ref.key().split("/")


@given(st.text(max_size=300))
def test_any_text_parses_to_a_safe_ref_or_is_rejected(text: str) -> None:
    _check(text)


@given(
    st.lists(
        st.sampled_from(
            [
                "..",
                ".",
                "/",
                "\x00",
                "a",
                "B",
                ":",
                "@",
                "\u2025",
                "%2e",
                "\\",
                "lab",
                "app",
                "sha256:",
                "~",
                " ",
                "\u0338",
            ]
        ),
        max_size=20,
    )
)
def test_adversarial_pieces(pieces: list[str]) -> None:
    for head in ("", "s3://bucket/", "file:///d/", "remote:"):
        _check(head + "".join(pieces))
