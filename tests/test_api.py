"""The public Python API: docs/api.md's examples run as written, and the package stays light."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import registry_client as rc
from registry_client import sif
from registry_client.config import RemoteConfig
from tests.support.helpers import write_config

ROOT = Path(__file__).resolve().parents[1]


def doc_blocks() -> list[str]:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_docs_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'default_remote = "lab"\n[remotes.lab]\ntype = "file"\npath = "{tmp_path}/bucket"\n'
    )
    monkeypatch.setenv("REGISTRY_CLIENT_CONFIG", str(config))
    monkeypatch.chdir(tmp_path)
    sif.make_test_sif(tmp_path / "app.sif", 256 * 1024, seed=3)
    blocks = doc_blocks()
    assert len(blocks) >= 4
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), namespace)  # noqa: S102 - our own docs
    assert (tmp_path / "app-copy.sif").read_bytes() == (tmp_path / "app.sif").read_bytes()
    assert (tmp_path / "job-cache" / "CACHEDIR.TAG").is_file()


def test_public_names_resolve_and_are_documented() -> None:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    for name in rc.__all__:
        assert getattr(rc, name) is not None
        assert name == "__version__" or f"`{name}" in text or f"rc.{name}" in text, name
    with pytest.raises(AttributeError):
        _ = rc.no_such_name  # type: ignore[attr-defined]


def test_errors_carry_the_cli_exit_codes() -> None:
    assert (rc.UsageError.exit_code, rc.NotFound.exit_code, rc.IntegrityError.exit_code) == (
        2,
        3,
        4,
    )
    assert issubclass(rc.ObjectChanged, rc.RemoteUnavailable)
    assert issubclass(rc.InvalidReference, rc.RegistryClientError)


def test_bad_reference_raises_before_any_io(tmp_path: Path) -> None:
    client = rc.Client(cache_dir=str(tmp_path / "c"))
    with pytest.raises(rc.InvalidReference):
        client.pull("../etc/passwd")
    assert not (tmp_path / "c").exists()


def test_importing_the_package_loads_nothing_heavy() -> None:
    code = (
        "import sys, registry_client, registry_client.cache; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('registry_client', 'typer', 'rich', 'botocore', 'swiftclient', 'requests')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = eval(out.stdout)  # noqa: S307 - a list literal we printed
    assert loaded == [
        "registry_client",
        "registry_client.cache",
        "registry_client.errors",
        "registry_client.locks",
        "registry_client.names",
        "registry_client.safefs",
    ]


@pytest.mark.servers
def test_client_against_s3(tmp_path: Path, s3_remote: RemoteConfig) -> None:
    """A library user gets the CLI's guarantees on a real store: verified pulls, one cache."""
    config = write_config(tmp_path / "config.toml", {"lab": s3_remote}, "lab")
    client = rc.Client(config=str(config), cache_dir=str(tmp_path / "cache"))
    sif.make_test_sif(tmp_path / "app.sif", 3 * 1024 * 1024, seed=9)
    pushed = client.push(str(tmp_path / "app.sif"), "lab/app:2")
    pulled = client.pull("lab/app:2")
    assert pulled.sha256 == pushed.sha256 and not pulled.cached
    assert {"size", "etag", "sha256"} <= set(pulled.verified)
    assert client.pull("lab/app:2").cached
    assert [e["digest"] for e in client.cache_entries()] == [f"sha256:{pushed.sha256}"]
    assert client.verify_cache()["bad"] == []
    with pytest.raises(rc.IntegrityError):
        client.pull(f"lab/app:2@sha256:{'0' * 64}")
