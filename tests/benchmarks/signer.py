"""The SigV4 query signer (registry_client/sigv4.py) against botocore's presigner, timed.

    python -m tests.benchmarks.signer [--n 2000] [--repeats 5]

Both sign the same N object URLs with the same clock: botocore's frozen the way
tests/test_sigv4.py freezes it (botocore.auth.get_current_datetime patched), ours given the
time. Every URL of each is compared byte for byte before anything is timed, so the two do
the same work. The rounds alternate (ours, botocore's, ours, ...) and the median round
counts; one thread, so wall and CPU time are both printed. The fleet benchmark runs it too.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any
from unittest import mock
from urllib.parse import quote

WHEN = datetime.datetime(2026, 12, 1, 13, 0, 0)
EPOCH = WHEN.replace(tzinfo=datetime.timezone.utc).timestamp()
ENDPOINT = "http://127.0.0.1:8080"  # nothing listens: presigning is local
ACCESS, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def measure(n: int = 2000, repeats: int = 5) -> dict[str, Any]:
    import botocore.auth
    import botocore.session
    from botocore.config import Config

    from registry_client.sigv4 import Credentials, presign_url

    client = botocore.session.Session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=ENDPOINT,
        aws_access_key_id=ACCESS,
        aws_secret_access_key=SECRET,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    keys = [f"lab/app:{i}.sif" for i in range(n)]
    creds = Credentials(ACCESS, SECRET)

    def botocores() -> list[str]:
        params = [{"Bucket": "images", "Key": key} for key in keys]
        return [client.generate_presigned_url("get_object", p, ExpiresIn=7200) for p in params]

    def ours() -> list[str]:
        return [
            presign_url(
                f"{ENDPOINT}/images/{quote(key, safe='/~')}",
                creds,
                "us-east-1",
                signed_at=EPOCH,
                expires=7200,
            )
            for key in keys
        ]

    frozen = mock.patch.object(
        botocore.auth, "get_current_datetime", lambda remove_tzinfo=True: WHEN
    )
    with frozen:
        if ours() != botocores():
            raise AssertionError("the two signers disagree: nothing to compare")
        rounds: dict[str, list[tuple[float, float]]] = {"ours": [], "botocore": []}
        for _ in range(repeats):
            rounds["ours"].append(_timed(ours))
            rounds["botocore"].append(_timed(botocores))
    wall = {k: statistics.median(w for w, _ in v) / n * 1e6 for k, v in rounds.items()}
    cpu = {k: statistics.median(c for _, c in v) / n * 1e6 for k, v in rounds.items()}
    return {
        "signatures": n,
        "repeats": repeats,
        "ours_us": round(wall["ours"], 2),
        "botocore_us": round(wall["botocore"], 2),
        "ours_cpu_us": round(cpu["ours"], 2),
        "botocore_cpu_us": round(cpu["botocore"], 2),
        "botocore_over_ours": round(wall["botocore"] / wall["ours"], 2),
        "botocore_over_ours_cpu": round(cpu["botocore"] / cpu["ours"], 2),
        "date": time.strftime("%Y-%m-%d"),
        "commit": _commit(),
    }


def _timed(sign: Callable[[], list[str]]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.thread_time()
    sign()
    return time.perf_counter() - wall, time.thread_time() - cpu


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def render(r: dict[str, Any]) -> str:
    return (
        f"SigV4 presigned GET, {r['signatures']} signatures x {r['repeats']} rounds (median, "
        f"{r['date']}, {r['commit']}): registry_client.sigv4 {r['ours_us']} µs "
        f"({r['ours_cpu_us']} CPU µs), botocore generate_presigned_url {r['botocore_us']} µs "
        f"({r['botocore_cpu_us']} CPU µs): botocore/ours = {r['botocore_over_ours']}x "
        f"({r['botocore_over_ours_cpu']}x in CPU)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks.signer", description=__doc__)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    print(render(measure(args.n, args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
