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
        "cache_dir = 5\n",
        '[cache]\nshared = "false"\n',  # a non-empty string would turn sharing on
        "[cache]\nlocking = 0\n",
        '[transfer]\nconcurrency = "8"\n',
        "[transfer]\nchunk_size = -1\n",
        "[transfer]\npart_size = true\n",
        "[library]\nurl = 3\n",
        "cache = 1\n",
        '[remotes.x]\ntype = "s3"\nbucket = "b"\nmax_connections = "8"\n',
        '[remotes.x]\ntype = "s3"\nbucket = "b"\naddressing_style = "sideways"\n',
        '[remotes.x]\ntype = "swift"\nbucket = "b"\ninsecure = "yes"\n',
        '[remotes.x]\ntype = "swift"\nbucket = "b"\ntimeout = "soon"\n',
        '[remotes.x]\ntype = "file"\npath = ["/x"]\n',
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


@pytest.mark.parametrize(
    ("body", "key", "meant"),
    [
        ("[cache]\nsharde = true\n", "sharde", "shared"),
        ("[transfer]\nchunksize = 1048576\n", "chunksize", "chunk_size"),
        ('[library]\ntokn = "t"\n', "tokn", "token"),
        ('[shub]\nulr = "http://x"\n', "ulr", "url"),
        # `endpoint` for `endpoint_url` used to fall back to AWS itself
        (
            '[remotes.lab]\ntype = "s3"\nbucket = "b"\nendpoint = "http://x"\n',
            "endpoint",
            "endpoint_url",
        ),
        (
            '[remotes.lab]\ntype = "swift"\nbucket = "b"\nauth_ulr = "http://x"\n',
            "auth_ulr",
            "auth_url",
        ),
        ('[remotes.lab]\ntype = "file"\npaht = "/x"\npath = "/x"\n', "paht", "path"),
        ('[remotes.lab]\ntype = "s3"\nbucket = "b"\nauth_url = "http://x"\n', "auth_url", None),
    ],
)
def test_typos_inside_tables_are_refused_with_a_suggestion(
    tmp_path: Path, body: str, key: str, meant: str | None
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert f"unknown key {key!r}" in err.value.message and str(cfg) in err.value.message
    if meant:
        assert err.value.hint == f"did you mean {meant!r}?"


def test_cli_typo_and_wrong_type_exit_2_with_a_hint(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[cache]\nsharde = true\n")
    typo = run_cli("--config", str(cfg), "cache", "dir")
    assert typo.returncode == 2 and typo.stdout == ""
    assert typo.stderr.splitlines() == [
        f"error: {cfg}: unknown key 'sharde' in [cache]",
        "hint: did you mean 'shared'?",
    ]
    cfg.write_text('[cache]\nshared = "false"\n')
    wrong = run_cli("--config", str(cfg), "pull", "lab/app@sha256:" + "0" * 64)  # fast path too
    assert wrong.returncode == 2 and wrong.stdout == ""
    assert "shared must be true or false" in wrong.stderr
    assert wrong.stderr.splitlines()[1] == "hint: write shared = false, without quotes"


def test_remote_add_options_take_the_config_types(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    ok = run_cli(
        "--config", str(cfg), "remote", "add", "sw", "swift://c",
        "--option", "insecure=true", "--option", "timeout=30",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert load_config(cfg).remote("sw").options == {
        "bucket": "c",
        "insecure": True,
        "timeout": 30.0,
    }
    bad = run_cli("--config", str(cfg), "remote", "add", "s", "s3://b", "--option", "endpoint=x")
    assert bad.returncode == 2 and "did you mean 'endpoint_url'?" in bad.stderr
    assert "[remotes.s]" not in cfg.read_text()


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


def test_config_doc_lists_every_key_of_every_table_and_remote_type() -> None:
    """docs/config.md's Keys tables name what the schema takes: every table key, every
    remote type and every key of each type (so the doc cannot fall behind the code)."""
    import re

    from registry_client.backends import OPTIONS
    from registry_client.config import SCHEMA

    doc = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| `")]

    def named(prefix: str) -> set[str]:
        found = [r for r in rows if r.startswith(prefix)]
        return set().union(*(re.findall(r"`(?:\[[a-z]+\] )?([a-z_]+)`", r) for r in found))

    for table, keys in SCHEMA.items():
        if table == "remotes":
            assert named("| `[remotes.NAME]`") >= {"type", "prefix"}
        elif isinstance(keys, dict):
            assert set(keys) <= named(f"| `[{table}] "), (
                table,
                set(keys) - named(f"| `[{table}] "),
            )
        else:
            assert table in named(f"| `{table}`"), table
    for kind, keys in OPTIONS.items():
        documented = named(f"| `{kind}` |")
        assert set(keys) - {"type", "prefix"} <= documented, (kind, set(keys) - documented)
