"""The one HEAD of a warm pull, without the client libraries.

A job that starts on a node already holding its image asks the store one question: what
does the tag hold now? Importing botocore and loading its S3 service model, or swiftclient
and requests, costs several times that request (docs/performance.md). This module asks it
with the standard library — http.client, a SigV4 signature (registry_client.sigv4), a
Swift token — reading the settings the full clients read, the same way:

* S3: the remote's keys, region, endpoint and addressing style; else AWS_ACCESS_KEY_ID /
  AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE / AWS_DEFAULT_PROFILE, the shared
  credentials and config files (AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE),
  AWS_DEFAULT_REGION, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_CA_BUNDLE — with
  botocore's precedence (a remote's `profile` outranks the environment's keys, which
  outrank AWS_PROFILE).
* Swift: the same settings as swift_auth (backends.swift_config.SwiftAuth): a pre-made
  token, tempauth v1 or Keystone v3. The token is kept in memory for the full client,
  should the pull go on in this process.

Anything else says None — "ask the full client": an answer other than 200 or 404,
credentials it does not read (SSO, assume-role, web identity, credential_process,
instance or container roles), an endpoint or addressing set in the AWS config file,
proxies, FIPS or dual-stack endpoints, partitions other than aws. The caller then runs
the full pull, so every error and exit code is the full client's own.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from registry_client.backends.base import ObjectInfo
from registry_client.errors import RegistryClientError

if TYPE_CHECKING:
    import http.client

    from registry_client.config import RemoteConfig
    from registry_client.sigv4 import Credentials

MAX_HEADERS = 128  # a HEAD answer with more is not one we read lightly
AWS_REGION_RE = re.compile(r"[a-z]{2}(-[a-z]+)+-\d\Z")  # the aws partition's region names
DNS_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]\Z")  # virtual-host compatible
# A config profile with any of these gets its credentials in a way only botocore knows.
_ROLE_KEYS = (
    "role_arn",
    "web_identity_token_file",
    "credential_process",
    "credential_source",
    "sso_session",
    "sso_start_url",
    "sso_account_id",
    "login_session",
)


class _Unsupported(Exception):
    """This remote's settings need the full client."""


def stat_image(
    remote: RemoteConfig, keys: Sequence[str], env: Mapping[str, str] | None = None
) -> ObjectInfo | None:
    """The first of `keys` the remote holds, as the full backend's stat would describe it;
    None when the full client must answer (see the module's docstring)."""
    env = os.environ if env is None else env
    try:
        head = _HEADS[remote.type](remote, env)
        for key in keys:
            found = head(key)
            if found is not ABSENT:
                return found
    except (KeyError, _Unsupported, RegistryClientError):
        return None
    return None  # absent everywhere: the full client says so, with its hints


class _Absent:
    """A 404: the next suffix may be there."""


ABSENT: Any = _Absent()
Head = Callable[[str], "ObjectInfo | None"]


def _answer(key: str, status: int, headers: dict[str, str], info: Callable[..., ObjectInfo]) -> Any:
    if status == 404:
        return ABSENT
    if status != 200 or not headers.get("content-length", "").isdigit():
        raise _Unsupported(f"HTTP {status}")
    return info(key, headers)


def _s3_info(key: str, headers: dict[str, str]) -> ObjectInfo:
    """As S3Backend.stat describes an object: botocore's ContentLength, ETag and Metadata."""
    from registry_client.backends.swift_config import parse_modified

    meta = {k[11:]: v for k, v in headers.items() if k.startswith("x-amz-meta-")}
    etag = headers.get("etag", "").strip('"') or None
    return ObjectInfo(key, int(headers["content-length"]), etag, meta, parse_modified(headers))


# -- HTTP --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Http:
    connect_timeout: float
    read_timeout: float
    verify: bool | str = True  # False: no TLS checks; a path: that CA bundle

    def request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-cased headers, body up to 1 MiB); _Unsupported on anything odd."""
        import http.client

        parts = urlsplit(url)
        if _proxied(parts.scheme, parts.hostname or ""):
            raise _Unsupported("a proxy is configured")
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                parts.netloc, timeout=self.connect_timeout, context=self._tls()
            )
        elif parts.scheme == "http":
            conn = http.client.HTTPConnection(parts.netloc, timeout=self.connect_timeout)
        else:
            raise _Unsupported(parts.scheme)
        try:
            target = parts.path or "/"
            conn.request(
                method, f"{target}?{parts.query}" if parts.query else target, body, dict(headers)
            )
            if conn.sock is not None:
                conn.sock.settimeout(self.read_timeout)
            resp = conn.getresponse()
            if len(resp.getheaders()) > MAX_HEADERS:
                raise _Unsupported("too many headers")
            answer = {k.lower(): v for k, v in resp.getheaders()}
            data = resp.read(1024 * 1024 + 1) if method != "HEAD" else b""
            if len(data) > 1024 * 1024:
                raise _Unsupported("a long answer")
            return resp.status, answer, data
        except (OSError, http.client.HTTPException) as exc:
            raise _Unsupported(type(exc).__name__) from None
        finally:
            conn.close()

    def _tls(self) -> Any:
        import ssl

        if self.verify is False:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        cafile = self.verify if isinstance(self.verify, str) else _default_ca()
        return ssl.create_default_context(cafile=cafile)


def _default_ca() -> str | None:
    """The bundle botocore and requests use by default (certifi's), else the system's."""
    try:
        import certifi
    except ImportError:
        return None
    return str(certifi.where())


def _proxied(scheme: str, host: str) -> bool:
    """Whether the environment routes this URL through a proxy (then: the full client)."""
    names = (f"{scheme}_proxy", f"{scheme.upper()}_PROXY", "all_proxy", "ALL_PROXY")
    if not any(os.environ.get(n) for n in names):
        return False
    no_proxy = os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or ""
    for entry in (e.strip().lower().lstrip(".") for e in no_proxy.split(",")):
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return False
    return True


# -- S3 ------------------------------------------------------------------------------------


def _s3_head(remote: RemoteConfig, env: Mapping[str, str]) -> Head:
    from registry_client.sigv4 import EMPTY_SHA256, host_header, sign_headers

    options = remote.options
    if any(env.get(v, "").lower() == "true" for v in _AWS_VARIANTS):
        raise _Unsupported("FIPS or dual-stack endpoints")
    profile_name = str(options.get("profile") or "")
    creds, profile = _s3_credentials(options, env, profile_name)
    region = str(options.get("region") or env.get("AWS_DEFAULT_REGION") or "")
    region = region or profile.get("region") or "us-east-1"
    base, bucket_in_path = _s3_endpoint(options, env, profile, region)
    http = _Http(
        float(options.get("connect_timeout", 10)),
        float(options.get("read_timeout", 60)),
        env.get("AWS_CA_BUNDLE") or True,
    )

    def head(key: str) -> ObjectInfo | None:
        url = f"{base}{bucket_in_path}/{quote(remote.prefix + key, safe='/~')}"
        headers = sign_headers(
            "HEAD", url, {"Host": host_header(url)}, creds, region, payload_hash=EMPTY_SHA256
        )
        status, answer, _ = http.request("HEAD", url, headers)
        return _answer(key, status, answer, _s3_info)  # type: ignore[no-any-return]

    return head


_AWS_VARIANTS = ("AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT")


def _s3_credentials(
    options: Mapping[str, Any], env: Mapping[str, str], profile_name: str
) -> tuple[Credentials, dict[str, str]]:
    """(credentials, the config file's profile) in botocore's order of precedence."""
    from registry_client.sigv4 import Credentials

    named = profile_name or env.get("AWS_DEFAULT_PROFILE") or env.get("AWS_PROFILE") or ""
    profile = _config_profile(env, named or "default", explicit=bool(named))
    key, secret = options.get("access_key_id"), options.get("secret_access_key")
    if key and secret:
        return Credentials(str(key), str(secret), options.get("session_token") or None), profile
    if not profile_name:  # a remote's profile switches the environment's keys off
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        token = env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None
        if key and secret:
            return Credentials(key, secret, token), profile
        if key or secret or env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
            raise _Unsupported("partial or web-identity credentials")
    if any(k in profile for k in _ROLE_KEYS):
        raise _Unsupported("credentials from a role, SSO or a process")
    shared = _ini(env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials")
    for section in (shared.get(named or "default", {}), profile):
        key, secret = section.get("aws_access_key_id"), section.get("aws_secret_access_key")
        if key and secret:
            token = section.get("aws_session_token") or section.get("aws_security_token") or None
            return Credentials(key, secret, token), profile
    raise _Unsupported("no static credentials")  # instance roles and the like


def _config_profile(env: Mapping[str, str], name: str, explicit: bool) -> dict[str, str]:
    config = _ini(env.get("AWS_CONFIG_FILE") or "~/.aws/config")
    section = "default" if name == "default" else f"profile {name}"
    found = config.get(section)
    if (
        found is None
        and explicit
        and name not in _ini(env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials")
    ):
        raise _Unsupported("profile not found")  # the full client says so, exit 5
    return found or {}


def _ini(path: str) -> dict[str, dict[str, str]]:
    parser = configparser.RawConfigParser()
    try:
        parser.read(Path(path).expanduser(), encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise _Unsupported("an unreadable AWS file") from exc
    return {name: dict(parser.items(name)) for name in parser.sections()}


def _s3_endpoint(
    options: Mapping[str, Any], env: Mapping[str, str], profile: Mapping[str, str], region: str
) -> tuple[str, str]:
    """(scheme://host[:port], the path before the key: "/bucket" or "" when the bucket is
    in the host name), as botocore addresses the remote's bucket."""
    bucket = str(options.get("bucket") or "")
    configured = str(options.get("endpoint_url") or "")
    if not configured and env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() != "true":
        configured = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or ""
        if not configured and ("endpoint_url" in profile or "services" in profile):
            raise _Unsupported("an endpoint in the AWS config file")
    if "s3" in profile:
        raise _Unsupported("S3 settings in the AWS config file")
    style = str(options.get("addressing_style") or ("path" if configured else "auto"))
    if configured:
        parts = urlsplit(configured)
        if parts.path.strip("/") or parts.query or not parts.hostname:
            raise _Unsupported("an endpoint with a path")
        base = f"{parts.scheme}://{parts.netloc}"
        if style == "virtual":
            return f"{parts.scheme}://{bucket}.{parts.netloc}", ""
        return base, "/" + quote(bucket, safe="")
    if not AWS_REGION_RE.match(region) or region.startswith(("cn-", "us-gov-", "us-iso")):
        raise _Unsupported("a partition other than aws")
    host = "s3.amazonaws.com" if region == "us-east-1" else f"s3.{region}.amazonaws.com"
    if style != "path" and DNS_BUCKET_RE.match(bucket) and "." not in bucket:
        return f"https://{bucket}.{host}", ""
    return f"https://{host}", "/" + quote(bucket, safe="")


# -- Swift ---------------------------------------------------------------------------------


def _swift_head(remote: RemoteConfig, env: Mapping[str, str]) -> Head:
    from registry_client.backends.swift_config import (
        SwiftAuth,
        object_info,
        recall_token,
        remember_token,
    )

    options = remote.options
    auth = SwiftAuth.from_sources(options, env)  # AuthError when incomplete: full client
    container = str(options.get("bucket") or options.get("container") or "")
    timeout = float(options.get("timeout", 60))
    insecure = str(options.get("insecure", env.get("SWIFTCLIENT_INSECURE", ""))).lower()
    http = _Http(
        timeout, timeout, False if insecure in ("1", "true", "yes") else auth.cacert or True
    )
    held = recall_token(auth)
    if auth.storage_url and auth.auth_token:
        held = (auth.storage_url, auth.auth_token)
    if held is None:
        held = _swift_token(auth, http)
        remember_token(auth, *held)
    url, token = held

    def head(key: str) -> ObjectInfo | None:
        name = quote(remote.prefix + key, safe="/")
        target = f"{url.rstrip('/')}/{quote(container, safe='')}/{name}"
        status, answer, _ = http.request("HEAD", target, {"X-Auth-Token": token})
        answer = {k: _utf8(v) for k, v in answer.items()}
        return _answer(key, status, answer, object_info)  # type: ignore[no-any-return]

    return head


# -- a directory ---------------------------------------------------------------------------


def _file_head(remote: RemoteConfig, env: Mapping[str, str]) -> Head:
    """A local directory needs no client library: its own backend is light."""
    from registry_client.backends.file import FileBackend
    from registry_client.errors import NotFound

    backend = FileBackend.from_remote(remote)

    def head(key: str) -> ObjectInfo | None:
        try:
            return backend.stat(key)
        except NotFound:
            return ABSENT  # type: ignore[no-any-return]

    return head


def _utf8(value: str) -> str:
    """A header value as swiftclient reads it (UTF-8 sent as Latin-1 on the wire)."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def _swift_token(auth: Any, http: _Http) -> tuple[str, str]:
    """(storage URL, token) from tempauth v1 or Keystone v3."""
    if auth.version == "1":
        status, answer, _ = http.request(
            "GET", auth.auth_url, {"X-Auth-User": auth.user, "X-Auth-Key": auth.key}
        )
        url, token = answer.get("x-storage-url", ""), answer.get("x-auth-token", "")
        if not 200 <= status < 300 or not url or not token:
            raise _Unsupported("no token")
        return auth.storage_url or url, token
    import json

    from registry_client.backends.swift_config import _object_store_url, _tokens_url, _v3_body

    body = json.dumps(_v3_body(auth)).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    status, answer, data = http.request("POST", _tokens_url(auth.auth_url), headers, body)
    token = answer.get("x-subject-token", "")
    if status not in (200, 201) or not token:
        raise _Unsupported("no token")
    try:
        catalog = json.loads(data)["token"]["catalog"]
    except (ValueError, KeyError, TypeError, RecursionError):
        catalog = []
    url = auth.storage_url or _object_store_url(catalog, auth.region_name, auth.interface)
    if not url:
        raise _Unsupported("no object-store endpoint")
    return url, token


_HEADS: dict[str, Callable[[RemoteConfig, Mapping[str, str]], Head]] = {
    "s3": _s3_head,
    "swift": _swift_head,
    "file": _file_head,
}
