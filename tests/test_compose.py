"""docker-compose.yml and docs/servers.md agree on ports and credentials."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def doc_config() -> dict:
    text = (ROOT / "docs" / "servers.md").read_text()
    block = re.search(r"```toml\n(.*?)```", text, re.S)
    assert block, "docs/servers.md has no toml block"
    return tomllib.loads(block.group(1))


def host_ports(service: dict) -> set[int]:
    return {int(p.split(":")[-2]) for p in service.get("ports", [])}


def port_of(url: str) -> int:
    match = re.match(r"https?://127\.0\.0\.1:(\d+)", url)
    assert match, url
    return int(match.group(1))


def test_every_documented_remote_points_at_a_compose_port() -> None:
    services = compose()
    remotes = doc_config()["remotes"]
    minio, swift = services["minio"], services["swift"]
    assert port_of(remotes["minio"]["endpoint_url"]) in host_ports(minio)
    assert remotes["minio"]["access_key_id"] == minio["environment"]["MINIO_ROOT_USER"]
    assert remotes["minio"]["secret_access_key"] == minio["environment"]["MINIO_ROOT_PASSWORD"]
    assert port_of(remotes["swift-s3"]["endpoint_url"]) in host_ports(swift)
    assert port_of(remotes["swift"]["auth_url"]) in host_ports(swift)
    # The SAIO image's tempauth user; the same one our own Swift test server uses.
    from tests.support.servers import swift_aio

    assert remotes["swift"]["user"] == swift_aio.USER == remotes["swift-s3"]["access_key_id"]
    assert remotes["swift"]["key"] == swift_aio.KEY == remotes["swift-s3"]["secret_access_key"]


def test_documented_config_loads(tmp_path: Path) -> None:
    import os

    from registry_client.config import load_config

    text = re.search(r"```toml\n(.*?)```", (ROOT / "docs/servers.md").read_text(), re.S)
    cfg = tmp_path / "config.toml"
    cfg.write_text(text.group(1))
    os.chmod(cfg, 0o600)
    config = load_config(cfg)
    assert set(config.remotes) == {"minio", "swift-s3", "swift"}
    assert config.remote(None).name == "minio"


def test_registry_port_documented() -> None:
    text = (ROOT / "docs" / "servers.md").read_text()
    for port in host_ports(compose()["registry"]):
        assert f"127.0.0.1:{port}" in text


def test_non_docker_servers_documented_with_their_credentials() -> None:
    from tests.support.servers import moto_server, swift_aio

    text = (ROOT / "docs" / "servers.md").read_text()
    section = text[text.index("## Without Docker") :]
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if "|" in line}
    assert f"user `{swift_aio.USER}`, key `{swift_aio.KEY}`" in rows["swift"]
    assert (
        f"access key `{moto_server.ACCESS_KEY}`, secret `{moto_server.SECRET_KEY}`" in rows["moto"]
    )
    assert "none" in rows["registry"]
    assert (ROOT / "scripts" / "servers").stat().st_mode & 0o111
