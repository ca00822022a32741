"""The cloud vendors' own SDK downloads (what a user's script would do), as peers.

    python cloud_peer.py azure CONTAINER BLOB DEST [MAX_CONCURRENCY]
    python cloud_peer.py gcs BUCKET OBJECT DEST

Azure: AZURE_STORAGE_CONNECTION_STRING, `download_blob(max_concurrency=N).readinto()`.
GCS: STORAGE_EMULATOR_HOST (anonymous), `Blob.download_to_filename` (one stream; the
library checks the md5 / crc32c of whole-object downloads when the server sends them).
"""

from __future__ import annotations

import os
import sys


def azure(container: str, blob: str, dest: str, concurrency: int) -> None:
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(
        os.environ["AZURE_STORAGE_CONNECTION_STRING"]
    )
    with open(dest, "wb") as fh:
        stream = service.get_blob_client(container, blob).download_blob(max_concurrency=concurrency)
        stream.readinto(fh)


def gcs(bucket: str, name: str, dest: str) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="bench", credentials=AnonymousCredentials())
    client.bucket(bucket).blob(name).download_to_filename(dest)


def main(argv: list[str]) -> int:
    store, *args = argv
    if store == "azure":
        azure(args[0], args[1], args[2], int(args[3]) if len(args) > 3 else 8)
    elif store == "gcs":
        gcs(args[0], args[1], args[2])
    else:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
