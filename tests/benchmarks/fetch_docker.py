"""Time a docker:// → SIF build of a ~100 MB image from the loopback registry.

    python -m tests.benchmarks.fetch_docker [--mib 100]

Generates random layers in memory (nothing is written to the repository), pushes them to
a Debian docker-registry started for the run, then times: a cold pull (blob downloads +
unpack + mksquashfs + SIF), a rebuild from the blob cache (--force), and a cache hit.
Prints one JSON line. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from registry_client.fetch import FetchOptions, pull_fetcher
from registry_client.names import parse_reference
from tests.support.fixtures_oci import Image, Pusher, directory, file, make_layer
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
            timings = {}
            for label, force in (
                ("cold", False),
                ("rebuild_from_blob_cache", True),
                ("cache_hit", False),
            ):
                start = time.perf_counter()
                result = pull_fetcher(ctx, ref, force=force, options=FetchOptions("amd64"))
                timings[label] = round(time.perf_counter() - start, 2)
            blobs = sum(len(la.blob) for la in image.layers)
            print(
                json.dumps(
                    {
                        "uncompressed_mib": args.mib,
                        "blob_mib": round(blobs / MiB, 1),
                        "sif_mib": round(result.size / MiB, 1),
                        "seconds": timings,
                        "cpus": os.cpu_count(),
                    }
                )
            )
        finally:
            registry.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
