"""From a reference to the remote it names: a configured remote or a direct URL."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from registry_client.cache import short_id
from registry_client.config import Config, RemoteConfig, check_url
from registry_client.errors import UsageError
from registry_client.names import SCHEME_TYPES, ImageRef, check_segment, parse_image_ref

if TYPE_CHECKING:
    from registry_client.backends.base import Backend
    from registry_client.fleet import FleetSettings
    from registry_client.retry import RetryPolicy


def remote_for(config: Config, ref: ImageRef) -> RemoteConfig:
    """The remote a reference lives in. Direct URLs take no config at all."""
    if not ref.is_direct:
        return config.remote(ref.remote)
    if ref.scheme == "file":
        return RemoteConfig(f"file:{ref.location}", "file", {"path": ref.location})
    # Endpoints and credentials of direct URLs come from the ecosystem's own
    # conventions (AWS_* / OS_* / ST_* / AZURE_STORAGE_* / GOOGLE_* variables), read by
    # the backend itself.
    kind = SCHEME_TYPES.get(ref.scheme or "", "")
    return RemoteConfig(f"{ref.scheme}:{ref.location}", kind, {"bucket": ref.location})


def remote_id(remote: RemoteConfig) -> str:
    """A stable id of where a remote's objects live (not its name, which can change)."""
    endpoint = _endpoint(remote)
    location = remote.location
    if remote.type == "file":
        location = os.path.abspath(os.path.expanduser(location))
    return short_id(remote.type, endpoint, location, remote.prefix)


def _endpoint(remote: RemoteConfig) -> str:
    """Where a remote's requests go: its config (checked when read), else the ecosystem's
    variables, which must be http(s) URLs too."""
    endpoint = str(remote.options.get("endpoint_url") or remote.options.get("auth_url") or "")
    if endpoint:
        return endpoint
    if remote.type == "swift":  # same container name, other cluster
        endpoint = str(remote.options.get("storage_url") or "")
    variables = {
        "s3": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        "swift": ("OS_STORAGE_URL", "ST_AUTH", "OS_AUTH_URL"),
    }
    for var in variables.get(remote.type, ()) if not endpoint else ():
        if endpoint := os.environ.get(var, ""):
            return check_url(endpoint, var)
    if not endpoint and remote.type in CLOUD_ENDPOINTS:
        endpoint = CLOUD_ENDPOINTS[remote.type](remote.options)
    return endpoint


def _azure_endpoint(options: dict[str, object]) -> str:
    """The account a container lives in (never a key): URL, account name or connection
    string's endpoint."""
    explicit = options.get("account_url") or options.get("account") or ""
    if explicit:
        return str(explicit)
    conn = str(options.get("connection_string") or os.environ.get(AZ_CONN, ""))
    fields = dict(p.partition("=")[::2] for p in conn.split(";") if "=" in p)
    return (
        fields.get("BlobEndpoint")
        or fields.get("AccountName")
        or os.environ.get("AZURE_STORAGE_ACCOUNT", "")
    )


def _gcs_endpoint(options: dict[str, object]) -> str:
    return str(options.get("endpoint_url") or os.environ.get("STORAGE_EMULATOR_HOST", ""))


AZ_CONN = "AZURE_STORAGE_CONNECTION_STRING"
CLOUD_ENDPOINTS = {"azure": _azure_endpoint, "gcs": _gcs_endpoint}


def open_remote(
    remote: RemoteConfig, policy: RetryPolicy | None = None, fleet: FleetSettings | None = None
) -> Backend:
    """The backend of a remote, wrapped with the retry policy; with `fleet`, its ranged
    reads go through the site's cache proxies (registry_client.fleet)."""
    from registry_client.backends import open_backend
    from registry_client.retry import RetryingBackend

    _log_remote(remote)
    backend = open_backend(remote)
    if fleet is not None:
        from registry_client.fleet import with_cache_proxies

        backend = with_cache_proxies(backend, fleet)
    return RetryingBackend(backend, policy)


def _log_remote(remote: RemoteConfig) -> None:
    import logging

    log = logging.getLogger("registry_client.remotes")
    if log.isEnabledFor(logging.INFO):
        endpoint = _endpoint(remote) or "the default endpoint"
        where = f"{remote.location}/{remote.prefix}".rstrip("/")
        log.info("remote %s: %s %s at %s", remote.name, remote.type, where, endpoint)


def ls_targets(config: Config, target: str | None) -> list[tuple[RemoteConfig, str, str]]:
    """What `ls TARGET` may mean, most likely first: (remote, listing prefix, how to
    write a reference of it). A bucket URL's last folder is a collection
    (`s3://bucket/lab`, `s3://bucket/site/lab`), else a key prefix (`s3://bucket/site`)."""
    if not target or "://" not in target:
        remote, prefix = parse_remote_target(config, target)
        return [(remote, prefix, "")]
    scheme, _, rest = target.partition("://")
    rest = rest.rstrip("/")
    found = []
    with contextlib.suppress(UsageError):
        probe = parse_image_ref(f"{scheme}://{rest}/x")  # the last folder as collection
        remote = remote_for(config, probe)
        options = {**remote.options, "prefix": probe.prefix}
        base = f"{scheme}://{probe.location}/{probe.prefix}".rstrip("/") + "/"
        found.append(
            (RemoteConfig(remote.name, remote.type, options), f"{probe.collection}/", base)
        )
    remote, prefix = parse_remote_target(config, target)
    base = f"{scheme}://{remote.location}/{remote.prefix}".rstrip("/") + "/"
    found.append((remote, prefix, base))
    return found


def parse_remote_target(config: Config, target: str | None) -> tuple[RemoteConfig, str]:
    """`ls` targets: nothing, REMOTE, REMOTE:COLLECTION, or a direct bucket URL."""
    if not target:
        return config.remote(None), ""
    if "://" in target:
        scheme, _, rest = target.partition("://")
        probe = parse_image_ref(f"{scheme}://{rest.rstrip('/')}/x/x") if rest else None
        if probe is None:
            raise UsageError(f"invalid remote URL {target!r}")
        remote = remote_for(config, probe)
        options = {**remote.options, "prefix": probe.prefix}
        return RemoteConfig(remote.name, remote.type, options), ""
    name, _, collection = target.partition(":")
    if collection:
        check_segment(collection, "collection")
    return config.remote(name), f"{collection}/" if collection else ""
