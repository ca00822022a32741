"""`inspect`: the SIF header and descriptors of a local file or a remote image.

A remote image is read with a few ranged GETs (header, then the descriptor table):
inspecting a 10 GB image downloads a few kilobytes. What the header declares is bounded
(sif.MAX_DESCRIPTORS), every read is bounded (transfer.read_bytes) and watched like a
download's, and what the image names (descriptor names, labels) is printed escaped.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

from registry_client import sif
from registry_client.backends.base import Backend, ObjectInfo
from registry_client.console import one_line
from registry_client.digests import hash_file
from registry_client.errors import NotFound
from registry_client.names import ImageRef, parse_image_ref
from registry_client.settings import TransferSettings
from registry_client.transfer import MAX_IN_MEMORY, read_bytes


class RangeReader(io.RawIOBase):
    """A read-only, seekable view of a remote object; every read is one ranged GET, of
    at most transfer.MAX_IN_MEMORY bytes."""

    def __init__(
        self, backend: Backend, info: ObjectInfo, settings: TransferSettings | None = None
    ) -> None:
        self.backend = backend
        self.info = info
        self.settings = settings or TransferSettings()
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.info.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self.info.size - self.pos
        end = min(self.info.size, self.pos + min(size, MAX_IN_MEMORY))
        if end <= self.pos:
            return b""
        data = read_bytes(self.backend, self.info, self.pos, end, settings=self.settings)
        self.pos += len(data)
        return data


def describe(ctx: Any, target: str) -> dict[str, Any]:
    if os.path.exists(target) or target.startswith(("/", "./", "../")):
        return describe_file(target)
    ref = parse_image_ref(target)
    if ref.digest and (path := ctx.cache.lookup(ref.digest)):
        return {**describe_file(str(path)), "ref": str(ref)}
    return describe_remote(ctx, ref)


def describe_file(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise NotFound(f"{path}: no such file")
    digest = hash_file(path)
    data: dict[str, Any] = {
        "source": os.path.abspath(path),
        "size": digest.size,
        "digest": f"sha256:{digest.sha256}",
    }
    return {**data, **_sif_part(path)}


def describe_remote(ctx: Any, ref: ImageRef) -> dict[str, Any]:
    from registry_client.remotes import open_remote, remote_for
    from registry_client.service import image_record, stat_image

    backend = open_remote(remote_for(ctx.config, ref))
    try:
        info = stat_image(backend, ref)
        record = image_record(info, ref)
        data = {
            "source": f"{backend.location}{info.key}",
            **record,
            "metadata": dict(info.metadata),
        }
        return {**data, **_sif_part(RangeReader(backend, info, ctx.transfer))}
    finally:
        backend.close()


def _sif_part(source: Any) -> dict[str, Any]:
    try:
        image = sif.read_sif(source)
    except sif.SifError as exc:
        return {"sif": None, "sif_error": str(exc)}
    return {"sif": image.to_dict(), "arch": image.primary_arch()}


def format_description(data: dict[str, Any]) -> str:
    """The text form; each line escaped (names, labels and errors come from the image)."""
    return "\n".join(one_line(line) for line in _lines(data))


def _lines(data: dict[str, Any]) -> list[str]:
    lines = [f"source:  {data.get('source')}"]
    for key in ("ref", "digest", "size", "arch", "pushed", "labels"):
        if data.get(key) not in (None, {}, ""):
            lines.append(f"{key + ':':<8} {data[key]}")
    image = data.get("sif")
    if image is None:
        lines.append(f"not a SIF image: {data.get('sif_error')}")
        return lines
    header = image.get("header", {})
    lines.append("header:")
    lines += [f"  {k}: {v}" for k, v in header.items() if k != "launch_script"]
    lines.append("descriptors:")
    for d in image.get("descriptors", []):
        extra = json.dumps(d.get("extra")) if d.get("extra") else ""
        lines.append(
            f"  {d.get('id'):>3}  {d.get('datatype_name', d.get('datatype')):<22} "
            f"{d.get('size'):>12}  {d.get('name', '')}  {extra}".rstrip()
        )
    return lines
