"""OpenStack Swift authentication (tempauth v1, Keystone v3, pre-made tokens), shared
token renewal for per-thread connections, and Swift error translation. The settings
themselves (SwiftAuth) live in swift_config, which the light HEAD shares."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

import requests
import swiftclient.client as swift_client
from swiftclient.client import Connection
from swiftclient.exceptions import ClientException
from swiftclient.utils import LengthWrapper

from registry_client.backends._wire import first_line, is_transport_error, retry_after
from registry_client.backends.swift_config import (
    SwiftAuth,
    _object_store_url,
    _shown,
    _tokens_url,
    _v3_body,
    take_token,
)
from registry_client.errors import (
    AuthError,
    IntegrityError,
    NotFound,
    ObjectChanged,
    RegistryClientError,
    RemoteUnavailable,
)

# swiftclient logs the first characters of tokens and keys at INFO; never show any.
swift_client.logger_settings["reveal_sensitive_prefix"] = 0
MAX_TOKEN_ANSWER = 8 * 1024 * 1024


# -- errors -----------------------------------------------------------------------------


def translate(exc: BaseException, what: str) -> RegistryClientError:
    """swiftclient/requests errors → our tree; messages carry names, never credentials."""
    if isinstance(exc, RegistryClientError):
        return exc
    if isinstance(exc, ClientException):
        return _from_status(
            exc.http_status or 0, exc.http_reason or exc.msg, what, exc.http_response_headers or {}
        )
    if isinstance(exc, (requests.RequestException, OSError)) or is_transport_error(exc):
        return RemoteUnavailable(f"{what}: {type(exc).__name__}: {first_line(exc)}")
    return RegistryClientError(f"{what}: {type(exc).__name__}")


def _from_status(
    status: int, reason: str, what: str, headers: Mapping[str, str]
) -> RegistryClientError:
    text = f"{what}: HTTP {status} {reason}".strip() if status else f"{what}: {reason}"
    if status == 404:
        return NotFound(text)
    if status in (401, 403):
        return AuthError(text, hint="check the Swift credentials (ST_* / OS_* or the remote)")
    if status == 412:
        return ObjectChanged(f"{what}: the object changed during the transfer")
    if status == 422:
        return IntegrityError(f"{what}: the server's checksum differs from the data sent")
    # 409: an SLO whose segment no longer validates, or a PUT timestamp race; reads
    # diagnose the first case, both may be gone on the next attempt.
    if status >= 500 or status in (408, 409, 429, 498):
        return RemoteUnavailable(text, retry_after=retry_after(headers))
    return RegistryClientError(text)


# -- auth -------------------------------------------------------------------------------


def authenticate(auth: SwiftAuth, timeout: float, verify: bool | str) -> tuple[str, str]:
    """A fresh (storage URL, token)."""
    if auth.version == "1":
        try:
            url, token = swift_client.get_auth_1_0(
                auth.auth_url,
                auth.user,
                auth.key,
                timeout=timeout,
                insecure=verify is False,
                cacert=verify if isinstance(verify, str) else None,
            )
        except ClientException as exc:
            raise auth_failure(auth, exc.http_status or 0, exc.http_reason or "") from None
        except Exception as exc:
            raise translate(exc, f"Swift auth at {_shown(auth.auth_url)}") from None
    else:
        url, token = keystone_v3(auth, timeout, verify)
    return auth.storage_url or url, token


def auth_failure(auth: SwiftAuth, status: int, reason: str) -> RegistryClientError:
    """What an answer other than a token means, said about the auth URL, never about an
    image: a busy or failing service is retried (exit 6), anything else is an auth error
    (exit 5). Swift answers a wrong auth URL with 404, 412 ("Bad URL"), 400 or even 200
    (another endpoint): reporting those as "not found" or "changed during the download"
    sends users looking in the wrong place."""
    variable = "ST_AUTH" if auth.version == "1" else "OS_AUTH_URL"
    where = f"{'Swift auth' if auth.version == '1' else 'Keystone'} at {_shown(auth.auth_url)}"
    text = f"{where}: HTTP {status} {reason}".strip()
    if status >= 500 or status in (408, 429):
        return RemoteUnavailable(text)
    if status in (401, 403):
        who = "ST_USER/ST_KEY" if auth.version == "1" else "the OS_* credentials"
        return AuthError(f"{text}: credentials refused", hint=f"check {who} (or the remote's)")
    example = "http://HOST:8080/auth/v1.0" if auth.version == "1" else "https://HOST:5000/v3"
    return AuthError(
        f"{text}: not a working {'auth' if auth.version == '1' else 'Keystone'} endpoint",
        hint=f"check {variable} (or the remote's auth_url), e.g. {example}",
    )


def keystone_v3(auth: SwiftAuth, timeout: float, verify: bool | str) -> tuple[str, str]:
    """POST /v3/auth/tokens; the object-store endpoint comes from the service catalog."""
    where = f"Keystone at {_shown(auth.auth_url)}"
    try:
        resp = requests.post(
            _tokens_url(auth.auth_url),
            json=_v3_body(auth),
            timeout=timeout,
            verify=verify,
            headers={"Accept": "application/json"},
            stream=True,
        )
    except requests.RequestException as exc:
        raise RemoteUnavailable(f"{where}: {type(exc).__name__}") from None
    with resp:
        if resp.status_code not in (200, 201):
            raise auth_failure(auth, resp.status_code, resp.reason or "")
        token = resp.headers.get("X-Subject-Token", "")
        catalog = _catalog(resp, where)
    url = auth.storage_url or _object_store_url(catalog, auth.region_name, auth.interface)
    if not token or not url:
        raise AuthError(
            f"{where} returned no token or no {auth.interface} object-store "
            f"endpoint{' in ' + auth.region_name if auth.region_name else ''}",
            hint="set region_name / OS_REGION_NAME, or storage_url",
        )
    return url, token


def _catalog(resp: requests.Response, where: str) -> list[Any]:
    """The service catalog of a token answer, read bounded (catalogs are kilobytes)."""
    body = bytearray()
    try:
        for piece in resp.iter_content(64 * 1024):
            body += piece
            if len(body) > MAX_TOKEN_ANSWER:
                raise AuthError(f"{where}: a token answer larger than {MAX_TOKEN_ANSWER} bytes")
        data = json.loads(body)
    except requests.RequestException as exc:
        raise RemoteUnavailable(f"{where}: {type(exc).__name__}") from None
    except (ValueError, RecursionError):
        return []
    token = data.get("token") if isinstance(data, dict) else None
    catalog = token.get("catalog") if isinstance(token, dict) else None
    return catalog if isinstance(catalog, list) else []


class TokenStore:
    """One token for all of a backend's connections, numbered by generation.

    A connection starts every request with the newest token. When one is refused (401),
    the store re-authenticates only if no newer token appeared since that request began,
    so N threads hit by one revocation cause one re-authentication.
    """

    def __init__(self, auth: SwiftAuth, timeout: float, verify: bool | str) -> None:
        self.auth = auth
        self._timeout = timeout
        self._verify = verify
        self._lock = threading.Lock()
        premade = bool(auth.storage_url and auth.auth_token)  # a token alone names no URL
        self.url = auth.storage_url if premade else ""
        self.token = auth.auth_token if premade else ""
        if not premade and (held := take_token(auth)):  # the light HEAD's, this process
            self.url, self.token = held
        self.generation = 0
        self.renewals = 0

    def current(self) -> tuple[str, str, int]:
        with self._lock:
            if not self.token:
                self._authenticate()
            return self.url, self.token, self.generation

    def renew(self, refused: int) -> tuple[str, str, int]:
        """A fresh token after the one of generation `refused` got a 401."""
        with self._lock:
            if not self.token or self.generation <= refused:
                if not self.auth.renewable:
                    raise AuthError(
                        "the Swift token was refused and no credentials are set to get a new one",
                        hint="refresh OS_AUTH_TOKEN",
                    )
                self._authenticate()
            return self.url, self.token, self.generation

    def _authenticate(self) -> None:
        self.url, self.token = authenticate(self.auth, self._timeout, self._verify)
        self.generation += 1
        self.renewals += 1


class SwiftConnection(Connection):
    """A swiftclient Connection that takes its tokens from the shared store."""

    url: str | None  # set by swiftclient, and by us from the store
    token: str | None

    def __init__(self, tokens: TokenStore, **kwargs: Any) -> None:
        # swiftclient retries a 401 (once) only if it believes it holds credentials; the
        # real ones stay in the store, these markers just say "renewable".
        marker = "registry-client" if tokens.auth.renewable else None
        super().__init__(
            authurl=marker, user=marker, key=marker, retries=0, starting_backoff=0, **kwargs
        )
        self._tokens = tokens
        self._generation: int | None = None  # of the token in self.token

    def _retry(self, reset_func: Any, func: Any, *args: Any, **kwargs: Any) -> Any:
        if self.token and self._generation != self._tokens.generation:
            self.url, self.token, self._generation = self._tokens.current()
        return super()._retry(reset_func, func, *args, **kwargs)

    def get_auth(self) -> tuple[str, str]:
        # swiftclient calls this before the first request and after a 401.
        if self._generation is None:
            self.url, self.token, self._generation = self._tokens.current()
        else:
            self.url, self.token, self._generation = self._tokens.renew(self._generation)
        return self.url, self.token

    def put_object(
        self,
        container: str,
        obj: str,
        contents: Any,
        **kwargs: Any,
    ) -> str:
        # swiftclient rewinds a file body only when retries > 0; ours is re-sent once,
        # after a 401 and a new token.
        reset = contents.reset if isinstance(contents, LengthWrapper) else None
        return self._retry(reset, swift_client.put_object, container, obj, contents, **kwargs)
