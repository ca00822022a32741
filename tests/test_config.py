"""Config: zero-config default, TOML remotes, modes, secrets, remote add/ls/rm."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from registry_client.config import ConfigError, load_config
from registry_client.errors import NotFound
from tests.support.helpers import run_cli


def test_zero_config_default_is_local_file_remote(tmp_path: Path) -> None:
    config = load_config()
    remote = config.remote(None)
    assert (remote.name, remote.type) == ("local", "file")
    assert remote.location.startswith(str(tmp_path))


def test_named_remotes_and_default(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'default_remote = "lab"\n[remotes.lab]\ntype = "s3"\nbucket = "img"\n'
        'prefix = "/site/"\nendpoint_url = "http://127.0.0.1:1"\n'
    )
    config = load_config(cfg)
    assert config.remote(None).name == "lab"
    assert config.remote("lab").prefix == "site/"
    with pytest.raises(NotFound):
        config.remote("nope")


@pytest.mark.parametrize(
    "body",
    [
        "not toml [",
        '[remotes.x]\ntype = "ftp"\n',
        '[remotes.x]\ntype = "s3"\n',
        '[remotes.x]\ntype = "file"\n',
        "remotes = 3\n",
        '[remotes."Bad Name"]\ntype="file"\npath="/x"',
        "default_remote = 5\n",
    ],
)
def test_bad_config_is_config_error(tmp_path: Path, body: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(body)
    with pytest.raises(ConfigError):
        load_config(cfg)


def test_unknown_top_level_key_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('default = "lab"\n')  # meant default_remote: silently ignoring it would
    with pytest.raises(ConfigError) as err:  # push to the local remote instead
        load_config(cfg)
    assert "'default'" in str(err.value) and "default_remote" in (err.value.hint or "")
    result = run_cli("--config", str(cfg), "ls")
    assert result.returncode == 2 and "did you mean 'default_remote'" in result.stderr
    cfg.write_text(
        'cache_dir = "/tmp/x"\n[transfer]\nconcurrency = 4\n[library]\nurl = "http://x"\n'
    )
    assert load_config(cfg).settings["transfer"] == {"concurrency": 4}


def test_secret_in_group_readable_file_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[remotes.x]\ntype = "s3"\nbucket = "b"\nsecret_access_key = "s3cr3t"\n')
    os.chmod(cfg, 0o644)
    with pytest.raises(ConfigError, match="readable by others") as caught:
        load_config(cfg)
    assert "chmod 600" in (caught.value.hint or "")
    os.chmod(cfg, 0o600)
    assert "s3cr3t" not in repr(load_config(cfg).remote("x"))
    assert load_config(cfg).remote("x").public()["secret_access_key"] == "***"


def test_cli_remote_add_ls_rm(tmp_path: Path) -> None:
    env = {"REGISTRY_CLIENT_CONFIG": str(tmp_path / "cfg" / "config.toml")}
    env_missing = run_cli("remote", "ls", env=env)
    assert env_missing.returncode == 2  # an explicit config path that does not exist
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.toml").write_text("")
    added = run_cli(
        "remote",
        "add",
        "lab",
        "s3://images/site",
        "--endpoint-url",
        "http://127.0.0.1:9",
        "--option",
        "secret_access_key=hush-123",
        "--default",
        env=env,
    )
    assert added.returncode == 0, added.stderr
    assert "hush-123" not in added.stdout + added.stderr
    assert os.stat(tmp_path / "cfg" / "config.toml").st_mode & 0o777 == 0o600
    listed = json.loads(run_cli("remote", "ls", "--json", env=env).stdout)
    lab = next(r for r in listed if r["name"] == "lab")
    assert lab["default"] and lab["prefix"] == "site" and lab["secret_access_key"] == "***"
    assert run_cli("remote", "rm", "lab", env=env).returncode == 0
    assert run_cli("remote", "rm", "lab", env=env).returncode == 3
    bad = run_cli("remote", "add", "x", "ftp://nope", env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("error:")


def test_cli_bad_config_exit_2_no_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[[[ not toml")
    result = run_cli("--config", str(cfg), "pull", "lab/app")
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot read config")
    assert "Traceback" not in result.stderr
