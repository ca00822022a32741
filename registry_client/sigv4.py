"""AWS Signature Version 4 for S3, by hand: presigned URLs and signed headers at a given time.

Why not botocore: it signs with the clock (botocore.auth reads the current time inside
`add_auth`; no option sets it), while every node of a site must compute byte-identical
presigned URLs for a site cache to serve them all from one copy (docs/fleet.md): the signing
time has to be the start of a window. The standard library is enough, and a caller that only
signs (a light HEAD, a presigned GET) need not import botocore at all.

S3's rules, which differ from other AWS services: the path is signed as sent, neither
normalised nor encoded twice, and a presigned URL signs only the Host header with the payload
`UNSIGNED-PAYLOAD`. The output is checked byte for byte against botocore's with its clock
fixed (tests/test_sigv4.py). References: docs.aws.amazon.com/AmazonS3/latest/API/
sigv4-query-string-auth.html and sig-v4-header-based-auth.html.

Presigned URLs are bearer secrets: never log them or put them in an error message.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_EXPIRES = 7 * 24 * 3600  # S3 refuses presigned URLs valid for longer (SigV4)
# Headers a proxy may change or add on the way: never signed (botocore's list).
UNSIGNED_HEADERS = frozenset(
    {
        "baggage",
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "traceparent",
        "tracestate",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amzn-trace-id",
    }
)


@dataclass(frozen=True)
class Credentials:
    """An access key pair (and session token); repr never shows the secret parts."""

    access_key: str
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)


def presign_url(
    url: str,
    credentials: Credentials,
    region: str,
    *,
    signed_at: float,
    expires: int,
    method: str = "GET",
    service: str = "s3",
) -> str:
    """`url` (an S3 object URL, path already percent-encoded) with a query-string signature
    made at `signed_at` (Unix seconds) and valid for `expires` seconds from then."""
    if not 1 <= expires <= MAX_EXPIRES:
        raise ValueError(f"expires must be 1..{MAX_EXPIRES} seconds")
    parts = urlsplit(url)
    stamp = _timestamp(signed_at)
    scope = _scope(stamp, region, service)
    auth = [
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", f"{credentials.access_key}/{scope}"),
        ("X-Amz-Date", stamp),
        ("X-Amz-Expires", str(expires)),
        ("X-Amz-SignedHeaders", "host"),
    ]
    if credentials.token is not None:
        auth.append(("X-Amz-Security-Token", credentials.token))
    # The operation's own parameters first, then ours (the order botocore writes).
    query = "&".join(f"{_enc(k)}={_enc(v)}" for k, v in [*_query(parts.query), *auth])
    canonical = _canonical_request(
        method, parts.path, query, {"host": host_header(url)}, UNSIGNED_PAYLOAD
    )
    signature = _signature(credentials.secret_key, stamp, scope, region, service, canonical)
    return urlunsplit(
        (parts.scheme, parts.netloc, parts.path, f"{query}&X-Amz-Signature=" + signature, "")
    )


def sign_headers(
    method: str,
    url: str,
    headers: Mapping[str, str],
    credentials: Credentials,
    region: str,
    *,
    signed_at: float | None = None,
    payload_hash: str = EMPTY_SHA256,
    service: str = "s3",
) -> dict[str, str]:
    """The headers to send with a request signed in the Authorization header: `headers`
    plus X-Amz-Date, X-Amz-Content-SHA256, X-Amz-Security-Token and Authorization.

    `payload_hash` is the hex sha256 of the body (the empty body's by default) or
    UNSIGNED_PAYLOAD. `signed_at` defaults to now.
    """
    parts = urlsplit(url)
    stamp = _timestamp(time.time() if signed_at is None else signed_at)
    scope = _scope(stamp, region, service)
    out = {k: v for k, v in headers.items() if k.lower() not in _ADDED}
    out["X-Amz-Date"] = stamp
    if credentials.token:
        out["X-Amz-Security-Token"] = credentials.token
    out["X-Amz-Content-SHA256"] = payload_hash
    signed = {k.lower(): " ".join(str(v).split()) for k, v in out.items()}
    signed = {k: v for k, v in signed.items() if k not in UNSIGNED_HEADERS}
    signed.setdefault("host", host_header(url))
    query = "&".join(f"{_enc(k)}={_enc(v)}" for k, v in _query(parts.query))
    canonical = _canonical_request(method, parts.path, query, signed, payload_hash)
    signature = _signature(credentials.secret_key, stamp, scope, region, service, canonical)
    out["Authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={';'.join(sorted(signed))}, Signature={signature}"
    )
    return out


_ADDED = frozenset({"authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256"})


def host_header(url: str) -> str:
    """The Host a client sends for `url`: lower case, default port dropped, no userinfo."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}.get(parts.scheme)
    if parts.port is not None and parts.port != default:
        host = f"{host}:{parts.port}"
    return host


def _timestamp(when: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(int(when)))


def _scope(stamp: str, region: str, service: str) -> str:
    return f"{stamp[:8]}/{region}/{service}/aws4_request"


def _enc(text: str) -> str:
    return quote(text, safe="-_.~")


def _query(query: str) -> list[tuple[str, str]]:
    return parse_qsl(query, keep_blank_values=True) if query else []


def _canonical_request(
    method: str, path: str, query: str, headers: Mapping[str, str], payload: str
) -> str:
    pairs = sorted(tuple(p.partition("=")[::2]) for p in query.split("&")) if query else []
    names = sorted(headers)
    return "\n".join(
        [
            method.upper(),
            path or "/",
            "&".join(f"{k}={v}" for k, v in pairs),
            "".join(f"{n}:{headers[n]}\n" for n in names),
            ";".join(names),
            payload,
        ]
    )


def _signature(
    secret: str, stamp: str, scope: str, region: str, service: str, canonical: str
) -> str:
    to_sign = "\n".join(
        [ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()]
    )
    key = f"AWS4{secret}".encode()
    for part in (stamp[:8], region, service, "aws4_request"):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
