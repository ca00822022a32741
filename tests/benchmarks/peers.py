"""Command lines of the peers: what a user would type instead of registry-client."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from tests.benchmarks.tools import Tools
from tests.benchmarks.world import Target

HERE = Path(__file__).resolve().parent
BOTO3_PEER = str(HERE / "boto3_peer.py")

Builder = Callable[[Tools, Target, str, Path], list[str] | None]


def _s3_url(target: Target, key: str) -> str:
    return f"s3://{target.bucket}/{key}"


# -- downloads: (tools, target, key, dest) -> argv, or None where it does not apply --------


def aws_get(tools: Tools, target: Target, key: str, dest: Path) -> list[str] | None:
    exe = tools.get("aws")
    if not exe or target.kind != "s3":
        return None
    return [exe, "s3", "cp", "--quiet", "--no-progress", _s3_url(target, key), str(dest)]


def s5cmd_get(tools: Tools, target: Target, key: str, dest: Path) -> list[str] | None:
    exe = tools.get("s5cmd")
    if not exe or target.kind != "s3":
        return None
    return [exe, "--log", "error", "cp", _s3_url(target, key), str(dest)]


def rclone_get(tools: Tools, target: Target, key: str, dest: Path) -> list[str] | None:
    exe = tools.get("rclone")
    if not exe:
        return None
    return [exe, "copyto", "-q", f"bench:{target.bucket}/{key}", str(dest)]


def boto3_get(tools: Tools, target: Target, key: str, dest: Path) -> list[str] | None:
    if target.kind != "s3":
        return None
    return [sys.executable, BOTO3_PEER, "download", target.bucket, key, str(dest)]


def swift_get(tools: Tools, target: Target, key: str, dest: Path) -> list[str] | None:
    exe = tools.get("swift")
    if not exe or target.kind != "swift":
        return None
    return [exe, "-q", "download", target.bucket, key, "-o", str(dest)]


def then_sha256sum(download: Builder) -> Builder:
    """The download, then `sha256sum` of the file: what a script that wants the check we
    make (the image's sha256) has to add to a peer that verifies nothing."""

    def build(tools: Tools, target: Target, key: str, dest: Path) -> list[str] | None:
        argv = download(tools, target, key, dest)
        if argv is None:
            return None
        return ["sh", "-c", f"{shlex.join(argv)} && sha256sum {shlex.quote(str(dest))} >/dev/null"]

    return build


VERIFIED = " + sha256sum"  # suffix of the peers that check what they downloaded
DOWNLOADERS: dict[str, Builder] = {
    "aws s3 cp": aws_get,
    "s5cmd cp": s5cmd_get,
    "rclone copyto": rclone_get,
    "boto3 download_file": boto3_get,
    "swift download": swift_get,
    "s5cmd cp" + VERIFIED: then_sha256sum(s5cmd_get),
    "swift download" + VERIFIED: then_sha256sum(swift_get),
}


# -- uploads: (tools, target, key, file) -> argv ------------------------------------------


def aws_put(tools: Tools, target: Target, key: str, src: Path) -> list[str] | None:
    exe = tools.get("aws")
    if not exe or target.kind != "s3":
        return None
    return [exe, "s3", "cp", "--quiet", "--no-progress", str(src), _s3_url(target, key)]


def s5cmd_put(tools: Tools, target: Target, key: str, src: Path) -> list[str] | None:
    exe = tools.get("s5cmd")
    if not exe or target.kind != "s3":
        return None
    return [exe, "--log", "error", "cp", str(src), _s3_url(target, key)]


def rclone_put(tools: Tools, target: Target, key: str, src: Path) -> list[str] | None:
    exe = tools.get("rclone")
    if not exe:
        return None
    return [exe, "copyto", "-q", str(src), f"bench:{target.bucket}/{key}"]


def boto3_put(tools: Tools, target: Target, key: str, src: Path) -> list[str] | None:
    if target.kind != "s3":
        return None
    return [sys.executable, BOTO3_PEER, "upload", str(src), target.bucket, key]


def swift_put(
    tools: Tools, target: Target, key: str, src: Path, segment: int = 64 * 1024 * 1024
) -> list[str] | None:
    """`swift upload` with SLO segments (without -S it sends one PUT stream)."""
    exe = tools.get("swift")
    if not exe or target.kind != "swift":
        return None
    return [
        exe,
        "-q",
        "upload",
        "--use-slo",
        "-S",
        str(segment),
        "--object-name",
        key,
        target.bucket,
        str(src),
    ]


UPLOADERS: dict[str, Builder] = {
    "aws s3 cp": aws_put,
    "s5cmd cp": s5cmd_put,
    "rclone copyto": rclone_put,
    "boto3 upload_file": boto3_put,
    "swift upload": swift_put,
}


def curl_get(tools: Tools, url: str, headers: list[str]) -> list[str] | None:
    exe = tools.get("curl")
    if not exe:
        return None
    return [exe, "-s", "-f", "-o", "/dev/null", *headers, url]


def sregistry_pull(tools: Tools, target: Target, ref: str) -> list[str] | None:
    exe = tools.get("sregistry")
    if not exe or target.kind != "s3":
        return None
    return [exe, "pull", f"s3://{ref}"]


def sregistry_env(target: Target, endpoint: str, root: Path) -> dict[str, str]:
    return {
        "SREGISTRY_CLIENT": "s3",
        "SREGISTRY_S3_BASE": endpoint,
        "SREGISTRY_S3_BUCKET": target.bucket,
        "SREGISTRY_DATABASE": str(root),
        "SREGISTRY_STORAGE": str(root / "storage"),
        "SREGISTRY_CLIENT_SECRETS": str(root / "sregistry-secrets.json"),
    }
