"""The source contract suite (tests/support/source_contract.py) over every source: the
Library and the Hub on their fixture servers, docker:// on the Debian docker-registry
(through the proxy that can damage what it serves)."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from registry_client.sources import FetchOptions
from tests.support.fixtures_library import APP, TOKEN, sample_library
from tests.support.fixtures_oci import (
    NEEDS_REGISTRY,
    Image,
    Pusher,
    RegistryProxy,
    directory,
    file,
    make_layer,
)
from tests.support.fixtures_shub import sample_hub
from tests.support.source_contract import SourceContract, SourceRig


class TestLibrarySource(SourceContract):
    @pytest.fixture
    def rig(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SourceRig]:
        monkeypatch.setenv("REGISTRY_CLIENT_LIBRARY_TOKEN", TOKEN)
        with sample_library(tmp_path) as library:
            sha256 = library.images[APP].sha256
            yield SourceRig(
                ref=f"library://{APP}",
                pinned=f"library://lab/tools/app:sha256.{sha256}",
                missing="library://lab/tools/missing:1.0",
                options=FetchOptions(arch="amd64", library_url=library.url),
                checks=frozenset({"size", "sha256"}),
                corrupt=lambda: setattr(library, "corrupt", True),
                transfers=lambda: len(library.store.log),
                sha256=sha256,
            )


@pytest.mark.skipif(not shutil.which("mksquashfs"), reason="needs squashfs-tools")
class TestShubSource(SourceContract):
    @pytest.fixture
    def rig(self, tmp_path: Path) -> Iterator[SourceRig]:
        with sample_hub(tmp_path) as hub:
            image = hub.images["vsoch/hello-world:latest"]
            yield SourceRig(
                ref="shub://vsoch/hello-world",
                pinned=f"shub://vsoch/hello-world@{image.md5}",
                missing="shub://vsoch/nothing-here",
                options=FetchOptions(shub_url=hub.url),
                checks=frozenset({"md5"}),
                corrupt=lambda: setattr(hub, "corrupt", True),
                transfers=lambda: len(hub.files.log),
                sha256=hashlib.sha256(image.data).hexdigest(),
            )


REPO = "contract/app"


@pytest.fixture(scope="module")
def docker_image(docker_registry: Any) -> tuple[Image, str]:
    """A two-layer image in the registry: itself and its manifest digest."""
    image = Image(
        [
            make_layer([directory("etc"), file("etc/motd", "the source contract\n")]),
            make_layer([directory("opt"), file("opt/data.bin", os.urandom(200_000))]),
        ],
        "amd64",
        {"Cmd": ["/bin/sh"]},
    )
    return image, Pusher(docker_registry.url).image(REPO, image, "1")


@pytest.mark.servers
@NEEDS_REGISTRY
class TestDockerSource(SourceContract):
    @pytest.fixture
    def rig(self, docker_registry: Any, docker_image: tuple[Image, str]) -> Iterator[SourceRig]:
        image, manifest = docker_image
        proxy = RegistryProxy(docker_registry.url)
        try:
            yield SourceRig(
                ref=f"docker://{proxy.host}/{REPO}:1",
                pinned=f"docker://{proxy.host}/{REPO}@{manifest}",
                missing=f"docker://{proxy.host}/{REPO}:nope",
                options=FetchOptions(arch="amd64"),
                checks=frozenset({"manifest-digest", "blob-sha256", "diff-id"}),
                corrupt=lambda: setattr(proxy, "corrupt", True),
                transfers=lambda: len(proxy.server.requests_to(f"/v2/{REPO}/blobs/")),
                built=True,  # a SIF built here from the layers: its bytes are ours
                download=False,
                inputs=frozenset(la.descriptor["digest"].split(":")[1] for la in image.layers),
            )
        finally:
            proxy.stop()
