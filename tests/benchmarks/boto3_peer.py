"""Plain boto3 managed transfers (what a user's own script would do), as a peer.

    python boto3_peer.py download BUCKET KEY DEST
    python boto3_peer.py upload FILE BUCKET KEY

Endpoint and keys from the AWS_* environment; boto3's default TransferConfig.
"""

from __future__ import annotations

import os
import sys

import boto3
from botocore.config import Config


def client() -> object:
    config = Config(
        s3={"addressing_style": "path"},
        signature_version="s3v4",
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], config=config)


def main(argv: list[str]) -> int:
    verb, *args = argv
    s3 = client()
    if verb == "download":
        bucket, key, dest = args
        s3.download_file(bucket, key, dest)  # type: ignore[attr-defined]
    elif verb == "upload":
        path, bucket, key = args
        s3.upload_file(path, bucket, key)  # type: ignore[attr-defined]
    else:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
