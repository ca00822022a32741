"""A wrong Swift auth URL is an authentication error (exit 5) that names the setting to
fix, never "image not found" (exit 3) or "changed during the download": the real Swift
all-in-one answers such URLs with 404, 412 "Bad URL", 400, or 200 from another endpoint."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.helpers import run_cli

pytestmark = pytest.mark.servers


def _base(server: Any) -> str:
    return str(server.auth_url).rsplit("/auth/", 1)[0]


def _pull(env: dict[str, str]) -> tuple[int, list[str]]:
    result = run_cli("pull", "swift://rc-any/lab/app:1", env=env, timeout=120)
    assert result.stdout == "" and "Traceback" not in result.stderr
    return result.returncode, result.stderr.splitlines()


@pytest.mark.parametrize(
    ("path", "status"),
    [("/", "404"), ("/nope", "412"), ("/auth/v2.0", "400"), ("/info", "200")],
)
def test_a_wrong_tempauth_url_is_an_auth_error_naming_st_auth(
    swift_server: Any, path: str, status: str
) -> None:
    env = {"ST_AUTH": _base(swift_server) + path, "ST_USER": swift_server.user}
    code, lines = _pull({**env, "ST_KEY": swift_server.key})
    assert code == 5, lines
    assert lines[0].startswith(f"error: Swift auth at {env['ST_AUTH']}: HTTP {status}")
    assert "not a working auth endpoint" in lines[0]
    assert lines[1].startswith("hint: check ST_AUTH")
    assert not any("not found" in line or "changed" in line for line in lines)


def test_a_wrong_key_is_an_auth_error_without_the_key(swift_server: Any) -> None:
    env = {"ST_AUTH": swift_server.auth_url, "ST_USER": swift_server.user, "ST_KEY": "wr0ng-k3y"}
    code, lines = _pull(env)
    assert code == 5 and "credentials refused" in lines[0], lines
    assert lines[1] == "hint: check ST_USER/ST_KEY (or the remote's)"
    assert not any("wr0ng-k3y" in line for line in lines)


@pytest.mark.parametrize("path", ["/nope", "/"])
def test_a_wrong_keystone_url_is_an_auth_error_naming_os_auth_url(
    swift_server: Any, path: str
) -> None:
    env = {
        "OS_AUTH_URL": _base(swift_server) + path,
        "OS_USERNAME": "demo",
        "OS_PASSWORD": "s3cret-pw",
        "OS_PROJECT_NAME": "demo",
    }
    code, lines = _pull(env)
    assert code == 5, lines
    assert lines[0].startswith("error: Keystone at ") and "not a working Keystone" in lines[0]
    assert lines[1].startswith("hint: check OS_AUTH_URL")
    assert not any("s3cret-pw" in line for line in lines)
