"""The benchmark's world: loopback servers, buckets, configs, images, peer environments."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit

GiB = 1024**3
MiB = 1024**2
BUCKET = "bench"
COLLECTION = "bench"
REGION = "us-east-1"
SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([KMG]?)I?B?$", re.IGNORECASE)
UNITS = {"": 1, "K": 1024, "M": MiB, "G": GiB}


def parse_size(text: str) -> int:
    match = SIZE_RE.match(text.strip())
    if not match:
        raise ValueError(f"not a size: {text!r} (e.g. 256M, 1G)")
    return int(float(match.group(1)) * UNITS[match.group(2).upper()])


def size_label(size: int) -> str:
    if size % GiB == 0:
        return f"{size // GiB}G"
    return f"{size // MiB}M" if size % MiB == 0 else str(size)


@dataclass
class Target:
    """One place images live: S3 on Swift's s3api, S3 on moto, or native Swift."""

    name: str
    kind: str  # "s3" or "swift"
    server: Any
    bucket: str = BUCKET
    token: str = ""  # native Swift: an auth token for curl
    storage_url: str = ""

    def remote(self, endpoint: str | None = None) -> dict[str, Any]:
        if self.kind == "swift" and endpoint:  # a pre-made token, the storage URL via endpoint
            return {
                "type": "swift",
                "bucket": self.bucket,
                "auth_token": self.token,
                "storage_url": self.storage_url_via(endpoint),
            }
        if self.kind == "swift":
            return {
                "type": "swift",
                "bucket": self.bucket,
                "auth_url": self.server.auth_url,
                "user": self.server.user,
                "key": self.server.key,
            }
        return {
            "type": "s3",
            "bucket": self.bucket,
            "region": REGION,
            "endpoint_url": endpoint or self.server.s3_endpoint,
            "access_key_id": self.server.access_key,
            "secret_access_key": self.server.secret_key,
        }

    def storage_url_via(self, endpoint: str) -> str:
        """The account's storage URL with its scheme://host:port replaced by endpoint."""
        from urllib.parse import urlsplit

        return endpoint.rstrip("/") + urlsplit(self.storage_url).path

    def peer_env(self, endpoint: str | None = None) -> dict[str, str]:
        """Credentials the peers read from the environment (never printed)."""
        if self.kind == "swift" and endpoint:
            return {"OS_STORAGE_URL": self.storage_url_via(endpoint), "OS_AUTH_TOKEN": self.token}
        if self.kind == "swift":
            return {
                "ST_AUTH": self.server.auth_url,
                "ST_USER": self.server.user,
                "ST_KEY": self.server.key,
                "RCLONE_CONFIG_BENCH_TYPE": "swift",
                "RCLONE_CONFIG_BENCH_USER": self.server.user,
                "RCLONE_CONFIG_BENCH_KEY": self.server.key,
                "RCLONE_CONFIG_BENCH_AUTH": self.server.auth_url,
            }
        url = endpoint or self.server.s3_endpoint
        return {
            "AWS_ACCESS_KEY_ID": self.server.access_key,
            "AWS_SECRET_ACCESS_KEY": self.server.secret_key,
            "AWS_ENDPOINT_URL": url,
            "S3_ENDPOINT_URL": url,
            "RCLONE_CONFIG_BENCH_TYPE": "s3",
            "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
            "RCLONE_CONFIG_BENCH_ENDPOINT": url,
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": self.server.access_key,
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": self.server.secret_key,
            "RCLONE_CONFIG_BENCH_REGION": REGION,
            "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
        }


@dataclass
class Image:
    size: int
    path: Path
    tag: str
    sha256: str = ""

    @property
    def label(self) -> str:
        return size_label(self.size)

    @property
    def ref(self) -> str:
        return f"{COLLECTION}/img:{self.tag}"

    @property
    def key(self) -> str:
        return f"{COLLECTION}/img:{self.tag}.sif"


@dataclass
class World:
    work: Path
    targets: dict[str, Target] = field(default_factory=dict)
    images: dict[int, Image] = field(default_factory=dict)
    transfer: dict[str, int] = field(default_factory=dict)  # [transfer] overrides
    warm_list: list[Image] = field(default_factory=list)  # the `cache warm` figure's images

    def base_env(self) -> dict[str, str]:
        """The environment every process gets: nothing of the user's cloud settings."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(
                (
                    *("AWS_", "OS_", "ST_", "REGISTRY_CLIENT_", "RCLONE_", "SREGISTRY_"),
                    *("AZURE_", "GOOGLE_", "STORAGE_EMULATOR_HOST"),
                )
            )
        }
        home = self.work / "home"
        env.update(
            {
                "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": str(home / "aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
                "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION,
                "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
                "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
                "RCLONE_CONFIG": str(home / "rclone.conf"),
                "XDG_CONFIG_HOME": str(home / "config"),
                "XDG_CACHE_HOME": str(home / "cache"),
                "XDG_DATA_HOME": str(home / "data"),
                "HOME": str(home),
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        return env

    def config_for(self, target: Target, endpoint: str | None = None, tag: str = "") -> Path:
        """A 0600 registry-client config with one default remote `lab`."""
        path = self.work / "configs" / f"{target.name}{tag}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        data: dict[str, Any] = {
            "default_remote": "lab",
            "remotes": {"lab": target.remote(endpoint)},
        }
        if self.transfer:
            data["transfer"] = dict(self.transfer)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
        with os.fdopen(fd, "w") as fh:
            fh.write(tomlkit.dumps(data))
        return path

    def rc_env(
        self, target: Target, cache: Path, endpoint: str | None = None, tag: str = ""
    ) -> dict[str, str]:
        env = self.base_env()
        env["REGISTRY_CLIENT_CONFIG"] = str(self.config_for(target, endpoint, tag))
        env["REGISTRY_CLIENT_CACHE_DIR"] = str(cache)
        return env

    def peers_env(self, target: Target, endpoint: str | None = None) -> dict[str, str]:
        return {**self.base_env(), **target.peer_env(endpoint)}


def start_targets(world: World, names: list[str]) -> list[Any]:
    """Start the servers the targets need; return them (to stop later)."""
    from tests.support.servers.moto_server import start_moto
    from tests.support.servers.swift_aio import start_swift

    servers: list[Any] = []
    if {"swift-s3api", "swift"} & set(names):
        swift = start_swift(world.work / "swift")
        servers.append(swift)
        for name in ("swift-s3api", "swift"):
            if name in names:
                world.targets[name] = Target(name, "s3" if name != "swift" else "swift", swift)
    if "moto" in names:
        moto = start_moto()
        servers.append(moto)
        world.targets["moto"] = Target("moto", "s3", moto)
    for target in world.targets.values():
        create_bucket(target)
    return servers


def s3_client(target: Target, endpoint: str | None = None) -> Any:
    from registry_client.backends.s3 import make_client

    options = target.remote(endpoint)
    return make_client(options)


def swift_conn(target: Target) -> Any:
    import swiftclient

    return swiftclient.Connection(
        authurl=target.server.auth_url, user=target.server.user, key=target.server.key, retries=1
    )


def create_bucket(target: Target) -> None:
    if target.kind == "swift":
        conn = swift_conn(target)
        conn.put_container(target.bucket)
        target.storage_url, target.token = conn.get_auth()
        conn.close()
    else:
        s3_client(target).create_bucket(Bucket=target.bucket)


def object_url(target: Target, key: str) -> tuple[str, list[str]]:
    """A URL curl can GET the object from, and the headers it needs."""
    from urllib.parse import quote

    if target.kind == "swift":
        url = f"{target.storage_url}/{target.bucket}/{quote(key)}"
        return url, ["-H", f"X-Auth-Token: {target.token}"]
    url = s3_client(target).generate_presigned_url(
        "get_object", Params={"Bucket": target.bucket, "Key": key}, ExpiresIn=7200
    )
    return url, []


def delete_object(target: Target, key: str) -> None:
    """Best effort: remove what a peer uploaded (and its segments)."""
    try:
        if target.kind == "swift":
            from swiftclient.service import SwiftService

            with SwiftService(
                {
                    "auth": target.server.auth_url,
                    "user": target.server.user,
                    "key": target.server.key,
                    "auth_version": "1.0",
                }
            ) as service:
                list(service.delete(container=target.bucket, objects=[key]))
        else:
            s3_client(target).delete_object(Bucket=target.bucket, Key=key)
    except Exception:  # noqa: BLE001 - cleanup only
        pass


def make_images(world: World, sizes: list[int]) -> None:
    from registry_client import sif

    folder = world.work / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for size in sorted(set(sizes)):
        label = size_label(size).lower()
        path = folder / f"img-{label}.sif"
        sif.make_test_sif(path, size, seed=size % 1000)
        world.images[size] = Image(size, path, f"s{label}")


def make_warm_list(world: World, count: int, size: int) -> list[Image]:
    """`count` distinct images of `size` (tags w0, w1, ...) for the `cache warm` figure."""
    from registry_client import sif

    folder = world.work / "images"
    folder.mkdir(parents=True, exist_ok=True)
    found = []
    for i in range(count):
        path = folder / f"warm-{i}.sif"
        sif.make_test_sif(path, size, seed=500 + i)
        found.append(Image(size, path, f"w{i}"))
    return found
