"""Time a docker:// → SIF build of a ~100 MB image from the loopback registry.

    python -m tests.benchmarks.fetch_docker [--mib 100]

Generates random layers in memory (nothing is written to the repository), pushes them to
a Debian docker-registry started for the run, then times: a cold pull (blob downloads +
unpack + mksquashfs + SIF), a rebuild from the blob cache (--force), and a cache hit.
The peer, measured in the same run on the same blobs, is what Apptainer's own build does:
`umoci unpack` of the image into a folder, then `mksquashfs` of that folder (skipped when
umoci is missing); `ratio_rebuild_to_peer` compares our rebuild (no download) with it.
CPU seconds: ours per thread (sampled from /proc) and in child processes (mksquashfs).
Prints one JSON line. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from registry_client.fetch import FetchOptions, pull_fetcher
from registry_client.names import parse_reference
from tests.support.fixtures_oci import Image, Pusher, directory, file, make_layer, sha256
from tests.support.helpers import make_context
from tests.support.servers.registry import start_registry

MiB = 1024 * 1024


def layers(total_mib: int) -> list:
    """Four layers: many small files, one big file, medium files, compressible text."""
    share = total_mib * MiB // 10
    small = [
        directory("data"),
        *[file(f"data/s{i:05d}", os.urandom(16 * 1024)) for i in range(3 * share // (16 * 1024))],
    ]
    big = [directory("opt"), file("opt/model.bin", os.urandom(4 * share))]
    medium = [
        directory("lib"),
        *[file(f"lib/m{i:04d}.so", os.urandom(MiB)) for i in range(2 * share // MiB)],
    ]
    text = [
        directory("share"),
        *[
            file(f"share/t{i:04d}.txt", (b"line of text %d\n" % i) * 4096)
            for i in range(share // (64 * 1024))
        ],
    ]
    return [make_layer(m) for m in (small, big, medium, text)]


def _thread_cpu() -> dict[int, float]:
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as fh:
                fields = fh.read().rpartition(")")[2].split()
        except OSError:
            continue
        found[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return found


@contextmanager
def cpu_sampled(out: dict[str, object]) -> Iterator[None]:
    """Per-thread CPU seconds of this process (busiest first) and of its children."""
    before, seen = _thread_cpu(), {}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            seen.update(_thread_cpu())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield
    finally:
        stop.set()
        sampler.join()
        seen.update(_thread_cpu())
        spent = sorted((cpu - before.get(tid, 0.0) for tid, cpu in seen.items()), reverse=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        out["threads"] = [round(c, 2) for c in spent if c >= 0.01]
        out["children"] = round(
            after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime, 2
        )


def write_layout(image: Image, folder: Path) -> None:
    """The image as an OCI image layout (for umoci), from the same blobs we pushed."""
    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    manifest = image.manifest
    for data in (image.config_blob, manifest, *(la.blob for la in image.layers)):
        (blobs / sha256(data)[7:]).write_bytes(data)
    (folder / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    entry = {
        "mediaType": image.media_type,
        "digest": sha256(manifest),
        "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "1"},
    }
    (folder / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))


def apptainer_way(image: Image, work: Path) -> dict[str, object]:
    """umoci unpack + mksquashfs of the folder, as Apptainer's build does (as root)."""
    layout, bundle = work / "layout", work / "bundle"
    write_layout(image, layout)
    cpu: dict[str, object] = {}
    start = time.perf_counter()
    with cpu_sampled(cpu):
        subprocess.run(["umoci", "unpack", "--image", f"{layout}:1", str(bundle)], check=True,
                       capture_output=True)  # fmt: skip
        subprocess.run(
            ["mksquashfs", str(bundle / "rootfs"), str(work / "peer.squashfs"), "-noappend",
             "-comp", "gzip", "-quiet", "-no-progress"],
            check=True, capture_output=True,
        )  # fmt: skip
    return {"seconds": round(time.perf_counter() - start, 2), "cpu": cpu}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=100, help="uncompressed image size")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-docker-") as tmp:
        work = Path(tmp)
        registry = start_registry(work / "registry")
        try:
            image = Image(layers(args.mib), "amd64", {"Cmd": ["/bin/sh"]})
            Pusher(registry.url).image("bench/big", image, "1")
            ref = parse_reference(f"docker://{registry.host}/bench/big:1")
            ctx = make_context(work)
            timings, cpu = {}, {}
            for label, force in (
                ("cold", False),
                ("rebuild_from_blob_cache", True),
                ("cache_hit", False),
            ):
                cpu[label] = {}
                start = time.perf_counter()
                with cpu_sampled(cpu[label]):
                    result = pull_fetcher(ctx, ref, force=force, options=FetchOptions("amd64"))
                timings[label] = round(time.perf_counter() - start, 2)
            peer = apptainer_way(image, work / "peer") if shutil.which("umoci") else None
            blobs = sum(len(la.blob) for la in image.layers)
            print(
                json.dumps(
                    {
                        "uncompressed_mib": args.mib,
                        "blob_mib": round(blobs / MiB, 1),
                        "sif_mib": round(result.size / MiB, 1),
                        "seconds": timings,
                        "cpu_seconds": {"rebuild_from_blob_cache": cpu["rebuild_from_blob_cache"]},
                        "peer_umoci_unpack_mksquashfs": peer,
                        "ratio_rebuild_to_peer": round(
                            timings["rebuild_from_blob_cache"] / peer["seconds"],
                            2,  # type: ignore[operator]
                        )
                        if peer
                        else None,
                        "cpus": os.cpu_count(),
                    }
                )
            )
        finally:
            registry.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
