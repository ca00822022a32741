"""A cached image pulled by tag is answered after one HEAD asked without botocore or
swiftclient (backends.light), with the credentials conventions of the full clients, the
full CLI's output, and the full CLI's errors whenever the light path steps aside.
Against the real servers: Swift's S3 API, moto, Swift's own API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from swiftclient.client import Connection

from registry_client.backends import light
from registry_client.config import RemoteConfig
from tests.conftest import new_bucket
from tests.support.backend_contract import write_random
from tests.support.faultproxy import FaultProxy
from tests.support.helpers import s3_options, write_config

pytestmark = pytest.mark.servers
MiB = 1024 * 1024
HEAVY = ("botocore", "swiftclient", "requests", "typer")
# The console script's entry, reporting which heavy modules the answer needed.
PROBE = (
    "import json, sys\n"
    "from registry_client.entry import main\n"
    "code = main(sys.argv[1:])\n"
    f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def run(
    args: list[str], env: dict[str, str], full: bool = False
) -> tuple[int, str, str, list[str]]:
    """(exit code, stdout, stderr without the probe's line, heavy modules loaded) of the
    console script's entry, or of the full CLI alone (`full`)."""
    code = PROBE if not full else PROBE.replace("registry_client.entry", "registry_client.cli")
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    *err, modules = proc.stderr.splitlines() or [""]
    return proc.returncode, proc.stdout, "\n".join(err), json.loads(modules or "[]")


def swift_admin(server: Any) -> Connection:
    return Connection(server.auth_url, server.user, server.key, retries=0)


@pytest.fixture(params=["swift-s3api", "moto", "swift"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """A remote `lab` (config file) and its server, with lab/app:1 pushed and pulled once."""
    kind = request.param
    if kind == "swift":
        server = request.getfixturevalue("swift_server")
        container = f"rc-{uuid.uuid4().hex[:12]}"
        swift_admin(server).put_container(container)
        options = {
            "bucket": container,
            "auth_url": server.auth_url,
            "user": server.user,
            "key": server.key,
        }
        remote = RemoteConfig("lab", "swift", options)
    else:
        server = request.getfixturevalue("moto_server" if kind == "moto" else "swift_server")
        bucket = new_bucket(server)
        remote = RemoteConfig("lab", "s3", s3_options(server, bucket))
    cfg = write_config(tmp_path / "config.toml", {"lab": remote}, "lab")
    env = {"REGISTRY_CLIENT_CONFIG": str(cfg), "REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "c")}
    data = write_random(tmp_path / "app.sif", 3 * MiB + 5, seed=41)
    assert run(["push", str(tmp_path / "app.sif"), "lab/app:1"], env)[0] == 0
    assert run(["pull", "lab/app:1"], env)[0] == 0  # cold: the full CLI downloads it
    return {"kind": kind, "server": server, "remote": remote, "env": env, "data": data}


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_by_tag_hit_after_one_light_head_as_the_full_cli_answers(
    store: dict[str, Any], extra: list[str]
) -> None:
    args = ["pull", *extra, "lab/app:1"]
    code, out, err, modules = run(args, store["env"])
    assert (code, err, modules) == (0, "", [])  # no botocore, swiftclient, requests, typer
    full = run(args, store["env"], full=True)
    assert (code, out) == full[:2]  # the full CLI's answer, byte for byte
    path = json.loads(out)["path"] if extra else out.strip()
    assert Path(path).read_bytes() == store["data"]


def test_a_new_image_under_the_tag_is_downloaded_not_answered_from_the_cache(
    store: dict[str, Any], tmp_path: Path
) -> None:
    new = write_random(tmp_path / "new.sif", 3 * MiB + 5, seed=42)  # same size, new bytes
    assert run(["push", str(tmp_path / "new.sif"), "lab/app:1"], store["env"])[0] == 0
    code, out, err, modules = run(["pull", "--json", "lab/app:1"], store["env"])
    assert code == 0, err
    result = json.loads(out)
    assert not result["cached"] and Path(result["path"]).read_bytes() == new
    assert modules  # the light HEAD saw a miss and handed over to the full pull
    again = run(["pull", "--json", "lab/app:1"], store["env"])
    assert json.loads(again[1])["path"] == result["path"] and again[3] == []


def test_a_missing_tag_gets_the_full_cli_error(store: dict[str, Any]) -> None:
    got = run(["pull", "lab/app:nope"], store["env"])
    full = run(["pull", "lab/app:nope"], store["env"], full=True)
    assert got[:3] == full[:3] and got[0] == 3 and got[2].startswith("error: ")


def test_a_refused_secret_gets_the_full_cli_error(store: dict[str, Any], tmp_path: Path) -> None:
    if store["kind"] == "moto":
        pytest.skip("moto accepts any secret")
    key = "key" if store["kind"] == "swift" else "secret_access_key"
    options = {**store["remote"].options, key: "not-the-secret-q"}
    remote = RemoteConfig("lab", store["remote"].type, options)
    env = {**store["env"]}
    env["REGISTRY_CLIENT_CONFIG"] = str(write_config(tmp_path / "bad.toml", {"lab": remote}, "lab"))
    got = run(["pull", "lab/app:1"], env)
    assert got[:3] == run(["pull", "lab/app:1"], env, full=True)[:3]
    assert got[0] == 5 and "not-the-secret-q" not in got[1] + got[2]


# -- the ecosystems' own conventions, with direct URLs and no config ------------------------


def test_s3_keys_and_endpoint_from_the_environment(moto_server: Any, tmp_path: Path) -> None:
    bucket = new_bucket(moto_server)
    env = {
        "AWS_ACCESS_KEY_ID": moto_server.access_key,
        "AWS_SECRET_ACCESS_KEY": moto_server.secret_key,
        "AWS_ENDPOINT_URL": moto_server.s3_endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "c"),
    }
    _warm_by_tag(f"s3://{bucket}/lab/app:2", env, tmp_path)


def test_s3_profile_from_the_shared_credentials_file(swift_server: Any, tmp_path: Path) -> None:
    bucket = new_bucket(swift_server)
    creds = tmp_path / "home" / "aws-creds"  # where the autouse fixture points the AWS SDKs
    creds.parent.mkdir(parents=True, exist_ok=True)
    creds.write_text(
        f"[site]\naws_access_key_id = {swift_server.access_key}\n"
        f"aws_secret_access_key = {swift_server.secret_key}\n"
    )
    env = {
        "AWS_PROFILE": "site",
        "AWS_ENDPOINT_URL": swift_server.s3_endpoint,
        "REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "c"),
    }
    _warm_by_tag(f"s3://{bucket}/lab/app:3", env, tmp_path)
    missing = run(["pull", f"s3://{bucket}/lab/app:3"], {**env, "AWS_PROFILE": "nope"})
    assert missing[0] == 5 and "profile" in missing[2] and missing[3]  # the full CLI's error


def test_swift_st_variables(swift_server: Any, tmp_path: Path) -> None:
    container = f"rc-{uuid.uuid4().hex[:12]}"
    swift_admin(swift_server).put_container(container)
    env = {
        "ST_AUTH": swift_server.auth_url,
        "ST_USER": swift_server.user,
        "ST_KEY": swift_server.key,
        "REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "c"),
    }
    _warm_by_tag(f"swift://{container}/lab/app:4", env, tmp_path)


def test_swift_premade_token(swift_server: Any, tmp_path: Path) -> None:
    container = f"rc-{uuid.uuid4().hex[:12]}"
    admin = swift_admin(swift_server)
    admin.put_container(container)
    url, token = admin.get_auth()
    env = {
        "OS_STORAGE_URL": url,
        "OS_AUTH_TOKEN": token,
        "REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "c"),
    }
    _warm_by_tag(f"swift://{container}/lab/app:5", env, tmp_path)


def _warm_by_tag(url: str, env: dict[str, str], tmp_path: Path) -> None:
    data = write_random(tmp_path / "x.sif", MiB + 3, seed=43)
    assert run(["push", str(tmp_path / "x.sif"), url], env)[0] == 0
    assert run(["pull", url], env)[0] == 0
    code, out, err, modules = run(["pull", url], env)
    assert (code, err, modules) == (0, "", [])
    assert Path(out.strip()).read_bytes() == data


def test_the_full_client_reuses_the_light_heads_swift_token(
    swift_server: Any, tmp_path: Path
) -> None:
    """A light HEAD that finds nothing cached hands over its token: one authentication."""
    container = f"rc-{uuid.uuid4().hex[:12]}"
    swift_admin(swift_server).put_container(container)
    with FaultProxy(swift_server.s3_endpoint) as proxy:
        env = {
            "ST_AUTH": f"{proxy.url}/auth/v1.0",  # tempauth answers with the proxy's URL
            "ST_USER": swift_server.user,
            "ST_KEY": swift_server.key,
            "REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "c"),
        }
        data = write_random(tmp_path / "x.sif", MiB, seed=44)
        assert run(["push", str(tmp_path / "x.sif"), f"swift://{container}/lab/app:6"], env)[0] == 0
        proxy.reset_stats()
        code, out, err, modules = run(["pull", f"swift://{container}/lab/app:6"], env)
        assert code == 0, err
        assert Path(out.strip()).read_bytes() == data and "swiftclient" in modules
        auths = [r for r in proxy.stats.log if r.target.startswith("/auth/")]
        assert len(auths) == 1


# -- units --------------------------------------------------------------------------------


def test_settings_only_botocore_knows_step_aside(tmp_path: Path) -> None:
    config = tmp_path / "aws-config"
    config.write_text("[profile role]\nrole_arn = arn:aws:iam::1:role/x\nsource_profile = a\n")
    remote = RemoteConfig("lab", "s3", {"bucket": "b", "profile": "role"})
    env = {"AWS_CONFIG_FILE": str(config), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no")}
    assert light.stat_image(remote, ["k.sif"], env) is None  # assume-role: botocore's job
    partial = {"AWS_ACCESS_KEY_ID": "AKID", **env}
    plain = RemoteConfig("lab", "s3", {"bucket": "b"})
    assert light.stat_image(plain, ["k.sif"], partial) is None
    fips = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "AWS_USE_FIPS_ENDPOINT": "true"}
    assert light.stat_image(plain, ["k.sif"], fips) is None
    china = RemoteConfig("lab", "s3", {"bucket": "b", "region": "cn-north-1"})
    assert light.stat_image(china, ["k.sif"], {**fips, "AWS_USE_FIPS_ENDPOINT": ""}) is None


def test_aws_addressing_as_botocore_does() -> None:
    opts = {"bucket": "my-images"}
    assert light._s3_endpoint(opts, {}, {}, "eu-west-3") == (
        "https://my-images.s3.eu-west-3.amazonaws.com",
        "",
    )
    assert light._s3_endpoint({"bucket": "a.b"}, {}, {}, "us-east-1") == (
        "https://s3.amazonaws.com",
        "/a.b",
    )
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}
    assert light._s3_endpoint(opts, env, {}, "us-east-1") == (
        "http://127.0.0.1:9000",
        "/my-images",
    )


def test_a_proxy_in_the_environment_hands_over(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", ".internal,localhost")
    assert light._proxied("https", "s3.amazonaws.com")
    assert not light._proxied("https", "store.internal")
    assert not light._proxied("http", "s3.amazonaws.com")
