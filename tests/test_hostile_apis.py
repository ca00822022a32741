"""The Library, the Hub and registries as hostile servers (tests/support/fixtures_hostile):
JSON of the wrong shape, absurd numbers, nesting deeper than a parser goes, text with
escape codes. Every pull ends in one clean `error:` line with the contract's exit code,
never a traceback, and nothing is written to the cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fixtures_hostile import HostileAPI
from tests.support.helpers import run_cli

SHA = "ab" * 32
DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.fixture
def api() -> Iterator[HostileAPI]:
    server = HostileAPI()
    try:
        yield server
    finally:
        server.stop()


def _pull(ref: str, tmp_path: Path, **env: str) -> tuple[int, list[str]]:
    cache = tmp_path / "nodecache"
    result = run_cli("pull", ref, env={"REGISTRY_CLIENT_CACHE_DIR": str(cache), **env})
    assert result.stdout == "" and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-2:-1] or (
        lines and lines[-1].startswith("error: ")
    ), lines
    assert not list(cache.glob("v1/sif/sha256/*")), "nothing may be published"
    return result.returncode, lines


LIBRARY_ANSWERS: list[tuple[Any, int, str]] = [
    ({"data": []}, 1, "without an image record"),
    ({"data": {"hash": [f"sha256.{SHA}"], "size": 10}}, 4, "neither a sha256"),
    ({"data": {"hash": f"sha256.{SHA}", "size": "10"}}, 1, "no valid size"),
    ({"data": {"hash": f"sha256.{SHA}", "size": 10**20}}, 1, "no valid size"),
    ({"data": {"hash": f"sha256.{SHA}", "size": True}}, 1, "no valid size"),
    (DEEP, 1, "did not answer JSON"),
]


@pytest.mark.parametrize(("body", "code", "said"), LIBRARY_ANSWERS)
def test_library_answers(api: HostileAPI, tmp_path: Path, body: Any, code: int, said: str) -> None:
    if isinstance(body, bytes):
        api.answer("/v1/images/", raw=body)
    else:
        api.answer("/v1/images/", body)
    got, lines = _pull("library://lab/col/app:1", tmp_path, REGISTRY_CLIENT_LIBRARY_URL=api.url)
    assert got == code and said in "\n".join(lines), lines


def test_library_error_text_cannot_forge_lines(api: HostileAPI, tmp_path: Path) -> None:
    forged = "no\nerror: forged\x1b[31m\nhint: rm -rf ~"
    api.answer("/v1/images/", {"error": {"code": 400, "message": forged}}, status=400)
    got, lines = _pull("library://lab/col/app:1", tmp_path, REGISTRY_CLIENT_LIBRARY_URL=api.url)
    assert got == 1 and len(lines) == 1, lines
    assert "no\\nerror: forged\\x1b[31m\\nhint: rm -rf ~" in lines[0]


@pytest.mark.parametrize(
    ("body", "code", "said"),
    [
        ({"image": ["http://x/y"], "version": "0" * 32}, 1, "no http(s) image URL"),
        ({"image": "http://127.0.0.1:9/y", "version": {"md5": "0" * 32}}, 4, "not an md5"),
        ([1, 2, 3], 1, "not a container manifest"),
        (DEEP, 1, "did not answer JSON"),
    ],
)
def test_hub_answers(api: HostileAPI, tmp_path: Path, body: Any, code: int, said: str) -> None:
    if isinstance(body, bytes):
        api.answer("/api/container/", raw=body)
    else:
        api.answer("/api/container/", body)
    got, lines = _pull("shub://user/repo:tag", tmp_path, REGISTRY_CLIENT_SHUB_URL=api.url)
    assert got == code and said in "\n".join(lines), lines


OCI = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": f"sha256:{SHA}"}


@pytest.mark.parametrize(
    ("body", "code", "said"),
    [
        ({"mediaType": OCI, "config": {**CONFIG, "size": 2}, "layers": 5}, 1, "no list of layers"),
        ({"mediaType": OCI, "config": {**CONFIG, "size": "2"}, "layers": []}, 1, "valid size"),
        ({"mediaType": OCI, "config": {**CONFIG, "size": 10**20}, "layers": []}, 1, "size"),
        (
            {
                "mediaType": OCI,
                "config": {**CONFIG, "size": 2},
                "layers": [{**CONFIG, "size": 1}] * 1001,
            },
            1,
            "at most 1000",
        ),
        (
            {"mediaType": INDEX, "manifests": [{"platform": []}, {"platform": {"os": 7}}]},
            3,
            "has no",
        ),
        ({"mediaType": INDEX, "manifests": {"a": 1}}, 3, "has no"),
        (DEEP, 1, "not JSON"),
    ],
)
def test_registry_answers(api: HostileAPI, tmp_path: Path, body: Any, code: int, said: str) -> None:
    if isinstance(body, bytes):
        api.answer("/v2/", raw=body)
    else:
        api.answer("/v2/", body)
    got, lines = _pull(f"docker://{api.host}/lab/app:1", tmp_path)
    assert got == code and said in "\n".join(lines), lines


def test_a_trickled_api_answer_is_cut_off(api: HostileAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    """An API answer (JSON, a manifest) is small: a server that drips it is cut off."""
    import time

    from registry_client.errors import RemoteUnavailable
    from registry_client.sources import http
    from tests.support.faultproxy import Fault, FaultProxy

    api.answer("/v1/images/", {"data": {"hash": f"sha256.{SHA}", "size": 10, "pad": "x" * 500}})
    monkeypatch.setattr(http, "API_DEADLINE", 1.0)
    with FaultProxy(api.url) as proxy:
        proxy.add_fault(Fault.slow(20, times=None))
        start = time.monotonic()
        with pytest.raises(RemoteUnavailable, match="no complete answer in 1 s"):
            http.get_json(http.new_session(), f"{proxy.url}/v1/images/x", "library image x")
        assert time.monotonic() - start < 5
