"""The conformance suite every read-only source passes (registry_client.sources.Source),
against a server that serves one image, through the acquire pipeline a pull runs.

A test module subclasses SourceContract and provides a `rig` fixture: a SourceRig naming
an image the server has (and the same image pinned by its digest), a reference it does
not have, and handles to damage the bytes it serves and to count the requests that moved
image bytes. Where a source legitimately differs, the rig declares it (`built`,
`download`) and the cases read that, never guess it:

* built=False: the published file is the server's bytes; the rig gives their sha256.
* built=True: the image is made here (docker: a SIF from layers), so its bytes are ours;
  the rig gives the sha256s of the inputs the cache must then hold, each verified.
* download: after resolve(), download() describes the image as one plain download.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry_client.context import Context
from registry_client.errors import IntegrityError, NotFound
from registry_client.fetch import pull_fetcher
from registry_client.hits import PullResult
from registry_client.names import FetcherRef, parse_reference
from registry_client.sources import FetchOptions, Source, open_source
from registry_client.transfer import TransferSettings
from tests.support.helpers import make_context

SHA256_RE = re.compile(r"[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class SourceRig:
    ref: str  # an image the server has
    pinned: str  # the same image named by its digest (sha256 tag, md5, manifest digest)
    missing: str  # a well-formed reference the server has no image for
    options: FetchOptions
    checks: frozenset[str]  # what a pull of `ref` verifies by (PullResult.verified has them)
    corrupt: Callable[[], None]  # from now on the server damages the image bytes it sends
    transfers: Callable[[], int]  # requests so far that moved image bytes
    built: bool = False  # capability: the image is made here, not downloaded as it is
    download: bool = True  # capability: download() describes it as one plain download
    sha256: str | None = None  # not built: the served image's sha256
    inputs: frozenset[str] = frozenset()  # built: sha256s of the inputs (layer blobs)

    def __post_init__(self) -> None:
        # What the cases compare a pull with: one of the two, as the rig declares.
        assert (self.inputs and not self.sha256) if self.built else bool(self.sha256)


def cache_files(ctx: Context) -> set[str]:
    """Every file in the cache but its lock files (a pull that failed may leave its lock)."""
    base = ctx.cache.base
    found = (p.relative_to(base) for p in base.rglob("*") if p.is_file())
    return {str(p) for p in found if p.parts[0] != "locks"}


def path_safe(part: str) -> bool:
    return bool(part) and not ({"/", "\0"} & set(part)) and ".." not in part and part != "."


class SourceContract:
    @pytest.fixture
    def ctx(self, tmp_path: Path) -> Context:
        # Small chunks: a few-MiB image takes several ranged reads.
        transfer = TransferSettings(chunk_size=256 * 1024, concurrency=3)
        return make_context(tmp_path / "node", transfer=transfer)

    def parse(self, text: str) -> FetcherRef:
        ref = parse_reference(text)
        assert isinstance(ref, FetcherRef)
        return ref

    @contextlib.contextmanager
    def source(self, ctx: Context, rig: SourceRig, ref: str | None = None) -> Iterator[Source]:
        source = open_source(ctx, self.parse(ref or rig.ref), rig.options)
        try:
            yield source
        finally:
            source.close()

    def pull(self, ctx: Context, rig: SourceRig, ref: str | None = None, **kw: bool) -> PullResult:
        return pull_fetcher(ctx, self.parse(ref or rig.ref), options=rig.options, **kw)

    def test_slot_is_path_safe_and_stable(self, ctx: Context, rig: SourceRig) -> None:
        slots = []
        for ref in (rig.ref, rig.pinned, rig.missing):
            with self.source(ctx, rig, ref) as one, self.source(ctx, rig, ref) as two:
                slot = one.slot()
                assert slot == two.slot()
            assert len(slot) == 3 and all(path_safe(part) for part in slot), slot
            slots.append(slot)
        assert len(set(slots)) == 3, "three references, three tag records"

    def test_resolve_names_the_content_stably(self, ctx: Context, rig: SourceRig) -> None:
        keys = []
        for ref in (rig.ref, rig.ref, rig.pinned):
            with self.source(ctx, rig, ref) as source:
                version = source.resolve()
            assert version.key and all(isinstance(k, str) and k for k in version.key)
            assert version.sha256 is None or SHA256_RE.match(version.sha256), version.sha256
            if version.sha256 is not None:
                assert version.sha256 == rig.sha256
            keys.append(version.key)
        assert keys[0] == keys[1] == keys[2], "the key names the content, not the reference"

    def test_missing_is_not_found_before_the_cache(self, ctx: Context, rig: SourceRig) -> None:
        with self.source(ctx, rig, rig.missing) as source, pytest.raises(NotFound) as raised:
            source.resolve()
        assert raised.value.exit_code == 3
        with pytest.raises(NotFound):
            self.pull(ctx, rig, rig.missing)
        assert cache_files(ctx) == set()

    def test_pull_verifies_and_then_hits(self, ctx: Context, rig: SourceRig) -> None:
        first = self.pull(ctx, rig)
        assert not first.cached and rig.checks <= set(first.verified), first.verified
        assert hashlib.sha256(Path(first.path).read_bytes()).hexdigest() == first.sha256
        if rig.built:
            blobs = ctx.cache.base / "blobs" / "sha256"
            held = {p.name.partition(".")[0]: p for p in blobs.iterdir()}
            assert set(held) == rig.inputs
            assert all(hashlib.sha256(p.read_bytes()).hexdigest() == h for h, p in held.items())
        else:
            assert first.sha256 == rig.sha256
        moved = rig.transfers()
        again = self.pull(ctx, rig)
        assert again.cached and again.path == first.path
        assert rig.transfers() == moved, "a hit moves no image bytes"

    def test_corrupt_bytes_publish_nothing(self, ctx: Context, rig: SourceRig) -> None:
        rig.corrupt()
        with pytest.raises(IntegrityError) as raised:
            self.pull(ctx, rig)
        assert raised.value.exit_code == 4
        assert cache_files(ctx) == set()

    def test_download_describes_the_published_bytes(self, ctx: Context, rig: SourceRig) -> None:
        got = self.pull(ctx, rig)
        data = Path(got.path).read_bytes()
        with self.source(ctx, rig) as source:
            source.resolve()
            described = source.download()
            if not rig.download:
                assert described is None
                return
            assert described is not None and (described.sha256 or described.md5)
            answer = described.session.get(described.url, headers=described.headers, timeout=30)
        assert answer.status_code == 200 and answer.content == data
        assert described.size in (None, got.size)
        assert described.sha256 in (None, got.sha256)
        assert described.md5 in (None, hashlib.md5(data).hexdigest())

    def test_close_twice_is_harmless(self, ctx: Context, rig: SourceRig) -> None:
        for resolved in (False, True):
            source = open_source(ctx, self.parse(rig.ref), rig.options)
            if resolved:
                source.resolve()
            source.close()
            source.close()

    def test_pinned_is_known_only_from_the_cache(self, ctx: Context, rig: SourceRig) -> None:
        """A tag is always asked for; a digest-pinned reference is answered without the
        network once its image was pulled (or, where the digest is the image's sha256,
        from the reference itself: never anything else)."""
        with self.source(ctx, rig) as tag, self.source(ctx, rig, rig.pinned) as pinned:
            assert tag.pinned(ctx.cache) is None
            early = pinned.pinned(ctx.cache)
        got = self.pull(ctx, rig)
        assert early in (None, got.sha256)
        with self.source(ctx, rig) as tag, self.source(ctx, rig, rig.pinned) as pinned:
            assert tag.pinned(ctx.cache) is None
            assert pinned.pinned(ctx.cache) == got.sha256
        assert self.pull(ctx, rig, rig.pinned, offline=True).path == got.path
