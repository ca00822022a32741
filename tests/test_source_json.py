"""What the Library, the Hub and registries answer is untrusted JSON: every field the
sources read is typed and bounded. Property tests feed each parser any JSON a hostile
server could send (and answers shaped like the real ones with hostile values): the only
outcomes are a well-typed result or one of our errors (a clean exit code), never a
TypeError, an AttributeError or a RecursionError that would end in a traceback."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from registry_client.errors import RegistryClientError
from registry_client.sources import library, shub
from registry_client.sources.docker import registry

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
anything = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
DIGEST = "sha256:" + "ab" * 32


def shaped(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts with (some of) the real answer's keys, each holding anything or a plausible value."""
    return st.fixed_dictionaries({}, optional={k: v | anything for k, v in fields.items()})


def outcome(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except RegistryClientError:
        return None


LIB_REF = library.parse("lab/col/app:1")
records = shaped(
    hash=st.sampled_from(["sha256." + "ab" * 32, "sif." + "0" * 8 + "-0000-0000-0000-" + "0" * 12]),
    size=st.integers(min_value=-5, max_value=10**20),
)


@given(records)
@settings(max_examples=300, deadline=None)
def test_library_image_records(data: dict[str, Any]) -> None:
    sha = outcome(library._record_hash, LIB_REF, data)
    assert sha is None or isinstance(sha, tuple)
    size = outcome(library._record_size, LIB_REF, data)
    assert size is None or (isinstance(size, int) and 0 <= size <= 10_000 * 5 * 1024**3)


search_images = shaped(
    tags=st.lists(st.text(max_size=10)),
    size=st.integers(),
    arch=st.text(max_size=10),
    description=st.text(max_size=10),
    entityName=st.text(max_size=10),
    collectionName=st.text(max_size=10),
    containerName=st.text(max_size=10),
    hash=st.text(max_size=10),
)


@given(shaped(image=st.lists(search_images | anything, max_size=5)))
@settings(max_examples=300, deadline=None)
def test_library_search_answers(results: dict[str, Any]) -> None:
    rows = outcome(library.search_rows, results)
    for row in rows or []:
        assert isinstance(row["ref"], str) and isinstance(row["description"], str)
        assert row["size"] is None or isinstance(row["size"], int)
        assert row["arch"] is None or isinstance(row["arch"], str)


SHUB_REF = shub.parse("user/repo:tag")


@given(
    shaped(
        image=st.sampled_from(["https://x/y.simg", "ftp://x", ""]),
        version=st.sampled_from(["0" * 32, "g" * 32]),
        commit=st.sampled_from(["0" * 40, ""]),
    )
)
@settings(max_examples=300, deadline=None)
def test_shub_manifests(data: dict[str, Any]) -> None:
    got = outcome(shub._manifest, SHUB_REF, data)
    if got is not None:
        assert isinstance(got.image_url, str) and isinstance(got.md5, str)
        assert got.commit is None or isinstance(got.commit, str)


descriptors = shaped(
    digest=st.just(DIGEST),
    size=st.integers(min_value=-1, max_value=10**20),
    mediaType=st.sampled_from(registry.LAYER_TYPES),
    urls=st.lists(st.text(max_size=10)),
    platform=shaped(
        os=st.just("linux"), architecture=st.just("amd64"), variant=st.text(max_size=4)
    ),
)
manifests = shaped(
    schemaVersion=st.integers(),
    mediaType=st.sampled_from([*registry.INDEX_TYPES, *registry.MANIFEST_TYPES]),
    config=descriptors,
    layers=st.lists(descriptors, max_size=4),
    manifests=st.lists(descriptors, max_size=4),
)


@given(manifests)
@settings(max_examples=400, deadline=None)
def test_registry_manifests_indexes_and_descriptors(data: dict[str, Any]) -> None:
    body = json.dumps(data).encode()
    parsed = outcome(registry._parse_manifest, body, "", "manifest")
    if parsed is None:
        return
    manifest, media = parsed
    if media in registry.INDEX_TYPES:
        entry = outcome(registry._select, manifest, registry.Platform("amd64"), "docker://x")
        assert entry is None or isinstance(entry, registry.Descriptor)
    else:
        got = outcome(registry.image_descriptors, manifest, "docker://x")
        if got is not None:
            config, layers = got
            assert all(isinstance(d.size, int) and d.size >= 0 for d in (config, *layers))
            assert all(isinstance(u, str) for d in (config, *layers) for u in d.urls)


@given(
    shaped(token=st.text(max_size=10), access_token=st.text(max_size=5), expires_in=st.integers())
)
@settings(max_examples=200, deadline=None)
def test_registry_token_answers(body: dict[str, Any]) -> None:
    got = outcome(registry._token_answer, body, "token")
    if got is not None:
        token, lifetime = got
        assert isinstance(token, str) and token
        assert lifetime is None or isinstance(lifetime, int)


def test_deeply_nested_json_is_an_error_not_a_crash() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert outcome(registry._parse_manifest, deep, "", "manifest") is None
