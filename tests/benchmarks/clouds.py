"""The cloud-emulator figure: our cold pull vs the vendor SDK's own download, same emulator.

Azurite (Azure Blob Storage) against azure-storage-blob's `download_blob(max_concurrency=8)`
and fake-gcs-server (Google Cloud Storage) against google-cloud-storage's
`download_to_filename`, interleaved repeat by repeat. The emulators are started here, in
the run's work folder, and stopped at the end. Images stay small (fake-gcs-server holds
about six times an object's size in memory while it is uploaded). Both sides run as their
own processes under GNU time; the emulator's CPU is measured beside each.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from tests.benchmarks.measure import Sample, checked, file_size, ratios, run_timed, summary
from tests.benchmarks.world import GiB, Image

OURS = "registry-client"
PEERS = {
    "azurite": "azure-storage-blob download_blob (max_concurrency=8)",
    "fake-gcs": "google-cloud-storage download_to_filename",
}
BUCKET = "bench"
PEER_SCRIPT = Path(__file__).with_name("cloud_peer.py")


def _start(name: str, work: Path) -> tuple[Any, dict[str, str]]:
    if name == "azurite":
        from tests.support.helpers import azure_service
        from tests.support.servers.azurite import start_azurite

        server = start_azurite(work / "azurite")
        azure_service(server).create_container(BUCKET)
        return server, {"AZURE_STORAGE_CONNECTION_STRING": server.connection_string}
    from tests.support.helpers import gcs_client
    from tests.support.servers.fake_gcs import start_fake_gcs

    server = start_fake_gcs(work / "fake-gcs")
    gcs_client(server).create_bucket(BUCKET)
    return server, {"STORAGE_EMULATOR_HOST": server.endpoint}


def cloud_figure(bench: Any, image: Image) -> list[dict[str, Any]]:
    """One row per emulator: ours / the SDK's download of the same object."""
    rows = []
    for name in ("azurite", "fake-gcs"):
        bench.log(f"{name}: cold pull {image.label} vs {PEERS[name]}")
        server, store_env = _start(name, bench.world.work)
        try:
            rows.append(_figure(bench, name, server, store_env, image))
        finally:
            server.stop()
    return rows


def _figure(
    bench: Any, name: str, server: Any, store_env: dict[str, str], image: Image
) -> dict[str, Any]:
    world = bench.world
    scheme = "azure" if name == "azurite" else "gs"
    ref = f"{scheme}://{BUCKET}/{image.ref}"
    env = {**world.base_env(), **store_env}
    config = world.work / "configs" / f"{name}.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[transfer]\n" + "".join(f"{k} = {v}\n" for k, v in world.transfer.items()))
    env["REGISTRY_CLIENT_CONFIG"] = str(config)
    env["REGISTRY_CLIENT_CACHE_DIR"] = str(bench.scratch(f"{name}-seed"))
    checked(run_timed([bench.rc, "push", str(image.path), ref], env), f"push {ref}")
    want = image.path.stat().st_size
    samples: dict[str, list[Sample]] = {OURS: [], PEERS[name]: []}
    for rep in range(bench.repeats):
        order = [OURS, PEERS[name]] if rep % 2 == 0 else [PEERS[name], OURS]
        for tool in order:
            samples[tool].append(_one(bench, name, server, env, tool, ref, want, image))
    gib = want / GiB
    ours, peer = samples[OURS], samples[PEERS[name]]
    return {
        "target": name,
        "label": image.label,
        "size": image.size,
        "peer": PEERS[name],
        "tools": {
            t: {
                "wall": summary([s.wall for s in v]),
                "cpu_s_per_gib": summary([s.cpu / gib for s in v]),
                "server_cpu_s_per_gib": summary(
                    [s.server_cpu / gib for s in v if s.server_cpu is not None]
                ),
                "rss_mb": summary([s.rss_mb for s in v]),
            }
            for t, v in samples.items()
        },
        "ratio": ratios([s.wall for s in ours], [s.wall for s in peer]),
    }


def _one(
    bench: Any,
    name: str,
    server: Any,
    env: dict[str, str],
    tool: str,
    ref: str,
    want: int,
    image: Image,
) -> Sample:
    folder = bench.scratch(f"{name}-pull")
    try:
        if tool == OURS:
            run_env = {**env, "REGISTRY_CLIENT_CACHE_DIR": str(folder)}
            sample = checked(
                run_timed([bench.rc, "pull", ref], run_env, watch=server.pids), f"pull {ref}"
            )
            got = Path(sample.stdout.strip())
        else:
            got = folder / "image.sif"
            store = "azure" if name == "azurite" else "gcs"
            cmd = [sys.executable, str(PEER_SCRIPT), store, BUCKET, image.key, str(got)]
            sample = checked(run_timed(cmd, env, watch=server.pids), f"{tool} of {ref}")
        if file_size(got) != want:
            raise RuntimeError(f"{tool}: {got} is not {want} bytes")
        return sample
    finally:
        shutil.rmtree(folder, ignore_errors=True)


__all__ = ["cloud_figure"]
