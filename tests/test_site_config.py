"""The site file (/etc/registry-client/config.toml, $REGISTRY_CLIENT_SITE_CONFIG): an admin
sets remotes, the cache location and policy once per node; the user's file overrides it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from registry_client.config import load_config
from registry_client.errors import ConfigError
from tests.support.helpers import run_cli

SITE = """\
default_remote = "site-s3"
cache_dir = "{cache}"

[cache]
shared = true
locking = true

[transfer]
concurrency = 4

[remotes.site-s3]
type = "s3"
bucket = "images"
endpoint_url = "http://127.0.0.1:9"

[remotes.archive]
type = "file"
path = "{archive}"
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "etc" / "config.toml"
    path.parent.mkdir()
    path.write_text(SITE.format(cache=tmp_path / "node-cache", archive=tmp_path / "archive"))
    monkeypatch.setenv("REGISTRY_CLIENT_SITE_CONFIG", str(path))
    return path


def user_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "home" / "cfg" / "registry-client" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_site_file_alone_sets_remotes_cache_and_policy(site: Path, tmp_path: Path) -> None:
    config = load_config()
    assert config.default_remote == "site-s3"
    assert config.remote(None).source == str(site)
    assert config.settings["cache"] == {"shared": True, "locking": True}
    result = run_cli("cache", "dir")
    assert result.stdout.strip() == str(tmp_path / "node-cache")


def test_user_file_overrides_the_site_file(site: Path, tmp_path: Path) -> None:
    user = user_file(
        tmp_path,
        'default_remote = "mine"\n[cache]\nlocking = false\n'
        f'[remotes.mine]\ntype = "file"\npath = "{tmp_path}/mine"\n'
        f'[remotes.archive]\ntype = "file"\npath = "{tmp_path}/my-archive"\n',
    )
    config = load_config()
    assert config.default_remote == "mine"
    # tables merge key by key; a remote is replaced as a whole
    assert config.settings["cache"] == {"shared": True, "locking": False}
    assert config.settings["transfer"] == {"concurrency": 4}
    assert config.remote("archive").options == {"path": f"{tmp_path}/my-archive"}
    assert config.remote("archive").source == str(user)
    assert config.remote("site-s3").source == str(site)
    # the environment and the command line come on top
    env = {"REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "env-cache")}
    assert run_cli("cache", "dir", env=env).stdout.strip() == str(tmp_path / "env-cache")
    flag = run_cli("--cache-dir", str(tmp_path / "flag"), "cache", "dir", env=env)
    assert flag.stdout.strip() == str(tmp_path / "flag")


def test_remote_ls_shows_where_each_remote_comes_from(site: Path, tmp_path: Path) -> None:
    user = user_file(tmp_path, f'[remotes.mine]\ntype = "file"\npath = "{tmp_path}/m"\n')
    rows = {r["name"]: r for r in json.loads(run_cli("remote", "ls", "--json").stdout)}
    assert rows["site-s3"]["source"] == str(site) and rows["site-s3"]["default"]
    assert rows["mine"]["source"] == str(user)
    assert rows["local"]["source"] == "built-in"
    text = run_cli("remote", "ls").stdout
    assert "SOURCE" in text.splitlines()[0] and str(site) in text


def test_remote_rm_of_a_site_remote_says_where_it_lives(site: Path) -> None:
    result = run_cli("remote", "rm", "archive")
    assert result.returncode == 2
    assert "site config" in result.stderr and str(site) in result.stderr
    assert "hint: " in result.stderr


@pytest.mark.parametrize(("mode", "what"), [(0o666, "file"), (0o620, "file"), (0o777, "folder")])
def test_site_file_writable_by_others_is_refused(
    site: Path, tmp_path: Path, mode: int, what: str
) -> None:
    target = site if what == "file" else site.parent
    if what == "file":
        os.chown(site, 0, 1234)  # a group other than root's
    target.chmod(mode)
    try:
        result = run_cli("remote", "ls")
    finally:
        target.chmod(0o755 if what == "folder" else 0o644)
    assert result.returncode == 2, result.stderr
    assert "writable by other users" in result.stderr and "chmod go-w" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_site_file_owned_by_another_user_is_refused(site: Path) -> None:
    os.chown(site, 65534, 65534)
    result = run_cli("pull", "--offline", "x/y:1")
    assert result.returncode == 2
    assert "belongs to uid 65534" in result.stderr


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[cache]\nshraed = true\n", "unknown key 'shraed'"),
        ('[remotes.x]\ntype = "s3"\nbucket = "b"\nsecret_access_key = "s"\n', "secret"),
        ('[cache]\nshared = "yes"\n', "must be true or false"),
    ],
)
def test_site_file_gets_the_user_files_checks(site: Path, body: str, message: str) -> None:
    site.write_text(body)
    site.chmod(0o644)
    with pytest.raises(ConfigError, match=message):
        load_config()
    result = run_cli("ls")
    assert result.returncode == 2 and str(site) in result.stderr


def test_a_named_site_file_that_is_missing_is_an_error(tmp_path: Path) -> None:
    env = {"REGISTRY_CLIENT_SITE_CONFIG": str(tmp_path / "nope.toml")}
    result = run_cli("remote", "ls", env=env)
    assert result.returncode == 2 and "site config" in result.stderr


def test_remote_add_keeps_comments_and_layout(site: Path, tmp_path: Path) -> None:
    text = (
        "# my remotes, by hand\n"
        'default_remote = "mine"  # the lab bucket\n\n'
        "[transfer]\nconcurrency = 2   # slow link\n\n"
        f'[remotes.mine]\ntype = "file"\npath = "{tmp_path}/m"   # local mirror\n'
    )
    user = user_file(tmp_path, text)
    result = run_cli(
        "remote", "add", "lab", "s3://images/site", "--endpoint-url", "http://127.0.0.1:9"
    )
    assert result.returncode == 0, result.stderr
    assert "added remote 'lab'" in result.stderr
    new = user.read_text()
    assert new.startswith(text)  # untouched, comments and all
    assert '[remotes.lab]\ntype = "s3"\nbucket = "images"\nprefix = "site"' in new
    assert "site-s3" not in new  # the site's remotes stay in the site file
    assert os.stat(user).st_mode & 0o777 == 0o600
    assert run_cli("remote", "rm", "mine").returncode == 0
    after = user.read_text()
    assert "# my remotes, by hand" in after and "[remotes.mine]" not in after
    assert "default_remote" not in after  # it named the removed remote
    assert load_config().default_remote == "site-s3"  # the site's default again


def test_remote_add_refuses_an_endpoint_without_a_scheme() -> None:
    result = run_cli("remote", "add", "lab", "s3://images", "--endpoint-url", "s3.example.org")
    assert result.returncode == 2
    assert "http:// or https://" in result.stderr and "hint: " in result.stderr


def test_fast_path_hit_uses_the_site_cache(site: Path, tmp_path: Path) -> None:
    from registry_client.sif import make_test_sif

    make_test_sif(tmp_path / "a.sif", 4096)
    assert run_cli("push", str(tmp_path / "a.sif"), "archive:lab/a:1").returncode == 0
    first = run_cli("pull", "archive:lab/a:1")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(str(tmp_path / "node-cache"))
    site.write_text(site.read_text().replace("[cache]\n", '[cache]\nmax_size = "200G"\n'))
    hit = run_cli("pull", "--offline", "archive:lab/a:1", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert hit.stdout == first.stdout
    assert "typer" not in hit.stderr  # answered before the full CLI loaded
    # the site's policy is read without the heavy modules: no hashing, no thread pools
    assert "concurrent.futures" not in hit.stderr and "maintenance" not in hit.stderr


def test_cache_dir_expands_user_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "etc" / "config.toml"
    site.parent.mkdir()
    site.write_text(f'cache_dir = "{tmp_path}/scratch/$USER/registry-client"\n')
    monkeypatch.setenv("REGISTRY_CLIENT_SITE_CONFIG", str(site))
    result = run_cli("cache", "dir", env={"USER": "alice"})
    assert result.stdout.strip() == f"{tmp_path}/scratch/alice/registry-client"
    site.write_text('cache_dir = "/scratch/$RC_SURELY_UNSET/x"\n')
    unset = run_cli("cache", "dir")
    assert unset.returncode == 2 and "not set" in unset.stderr
