"""The hand-written SigV4 signer against botocore's, with botocore's clock fixed."""

from __future__ import annotations

import datetime
from typing import Any

import botocore.auth
import botocore.session
import pytest
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotoConfig
from botocore.credentials import Credentials as BotoCredentials

from registry_client.sigv4 import (
    EMPTY_SHA256,
    UNSIGNED_PAYLOAD,
    Credentials,
    host_header,
    presign_url,
    sign_headers,
)

WHEN = datetime.datetime(2026, 12, 1, 13, 0, 0)
EPOCH = WHEN.replace(tzinfo=datetime.timezone.utc).timestamp()
KEYS = ["lab/app:1.2.sif", "lab/app:1.2 x+y~é&=?.sif", "a/b//c.sif", "ünï/cödé:latest.simg"]


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda remove_tzinfo=True: WHEN)


def _client(endpoint: str | None, style: str, token: str | None = None) -> Any:
    return botocore.session.Session().create_client(
        "s3",
        region_name="eu-west-3",
        endpoint_url=endpoint,
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        aws_session_token=token,
        config=BotoConfig(signature_version="s3v4", s3={"addressing_style": style}),
    )


def _unsigned(url: str) -> str:
    return url.partition("?")[0]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize(
    "endpoint,style",
    [(None, "virtual"), ("http://127.0.0.1:8080", "path"), ("https://s3.example.org", "path")],
)
@pytest.mark.parametrize("token", [None, "FQoGZXIvYXdzE//token+with/odd=chars"])
def test_presigned_url_is_byte_equal_to_botocores(
    frozen: None, key: str, endpoint: str | None, style: str, token: str | None
) -> None:
    client = _client(endpoint, style, token)
    theirs = client.generate_presigned_url(
        "get_object", Params={"Bucket": "images", "Key": key}, ExpiresIn=7200
    )
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    ours = presign_url(_unsigned(theirs), creds, "eu-west-3", signed_at=EPOCH, expires=7200)
    assert ours == theirs


def test_operation_parameters_stay_before_the_signature(frozen: None) -> None:
    client = _client("http://127.0.0.1:8080", "path")
    theirs = client.generate_presigned_url(
        "get_object", Params={"Bucket": "b", "Key": "k.sif", "VersionId": "v 1/2"}, ExpiresIn=60
    )
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    url = "http://127.0.0.1:8080/b/k.sif?versionId=v%201%2F2"
    assert presign_url(url, creds, "eu-west-3", signed_at=EPOCH, expires=60) == theirs


def test_same_window_same_url_and_a_secret_never_in_repr() -> None:
    creds = Credentials("AK", "SECRET", "TOKEN")
    one = presign_url("http://h/b/k", creds, "us-east-1", signed_at=3600, expires=7200)
    assert one == presign_url("http://h/b/k", creds, "us-east-1", signed_at=3600, expires=7200)
    assert one != presign_url("http://h/b/k", creds, "us-east-1", signed_at=3601, expires=7200)
    assert "SECRET" not in repr(creds) and "TOKEN" not in repr(creds)
    with pytest.raises(ValueError):
        presign_url("http://h/b/k", creds, "us-east-1", signed_at=0, expires=8 * 24 * 3600)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("token", [None, "session-token"])
@pytest.mark.parametrize("payload", [EMPTY_SHA256, UNSIGNED_PAYLOAD])
def test_signed_headers_match_botocore(
    frozen: None, key: str, token: str | None, payload: str
) -> None:
    from urllib.parse import quote

    url = f"https://images.s3.eu-west-3.amazonaws.com/{quote(key, safe='/~')}?partNumber=1"
    headers = {"Range": "bytes=0-0", "If-Match": '"abc"', "User-Agent": "x  y"}
    request = AWSRequest(method="HEAD", url=url, headers=dict(headers))
    # botocore decides itself whether to hash the payload: tell it through the client config.
    signing = payload != UNSIGNED_PAYLOAD
    request.context["client_config"] = BotoConfig(s3={"payload_signing_enabled": signing})
    boto_creds = BotoCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    botocore.auth.S3SigV4Auth(boto_creds, "s3", "eu-west-3").add_auth(request)
    ours = sign_headers(
        "HEAD",
        url,
        headers,
        Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token),
        "eu-west-3",
        signed_at=EPOCH,
        payload_hash=payload,
    )
    assert ours["Authorization"] == request.headers["Authorization"]
    assert ours["X-Amz-Date"] == request.headers["X-Amz-Date"]
    assert ours.get("X-Amz-Security-Token") == request.headers.get("X-Amz-Security-Token")


def test_host_header() -> None:
    assert host_header("https://S3.Example.org:443/b") == "s3.example.org"
    assert host_header("http://u:p@127.0.0.1:8080/b") == "127.0.0.1:8080"
    assert host_header("http://[::1]:9000/b") == "[::1]:9000"


def test_the_signer_benchmark_times_identical_urls() -> None:
    """tests/benchmarks/signer.py compares every URL of both signers before timing them."""
    from tests.benchmarks.signer import measure, render

    result = measure(n=5, repeats=1)
    assert result["signatures"] == 5 and result["ours_us"] > 0 and result["botocore_us"] > 0
    assert "botocore/ours" in render(result)
