"""The README's two commands work on a fresh Debian/Ubuntu machine with the system Python
(PEP 668 refuses pip there: the scripts make and use a venv) and inside an active venv."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = Path("/usr/bin/python3")


def readme_commands() -> list[str]:
    """The commands of the README's first sh block, comments dropped."""
    block = re.search(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README.md has no sh block"
    lines = (line.split("#")[0].strip() for line in block.group(1).splitlines())
    return [line for line in lines if line]


def test_readme_starts_with_demo_then_test() -> None:
    assert readme_commands() == ["bash scripts/demo", "bash scripts/test"]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(rf"^{re.escape(readme_commands()[1])}\b", ci, re.M), ci


def fresh_copy(dest: Path) -> Path:
    """The checkout's files as a fresh clone has them (committed or not, ignored ones not)."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listing.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def clean_env(tmp: Path, path: str, **extra: str) -> dict[str, str]:
    """A login-like environment: PATH as given, a private home, the pip cache shared."""
    home = tmp / "home"
    return {
        "PATH": path,
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        # Only to save downloads: each run installs from scratch, as on a new machine.
        "PIP_CACHE_DIR": str(Path.home() / ".cache" / "pip"),
        **extra,
    }


def run_demo(clone: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = readme_commands()[0].split()
    return subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.servers  # installs from the package index: not in the inner loop
@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="no system /usr/bin/python3")
def test_demo_on_a_fresh_clone_with_the_system_python(tmp_path: Path) -> None:
    clone = fresh_copy(tmp_path / "clone")
    result = run_demo(clone, clean_env(tmp_path, "/usr/bin:/bin"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "externally-managed" not in result.stderr
    assert "pulled image is identical to the pushed one" in result.stderr
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path.is_file() and path.is_relative_to(tmp_path / "home" / ".cache")
    cfg = (clone / ".venv" / "pyvenv.cfg").read_text()
    assert re.search(r"^home = /usr/bin$", cfg, re.M), cfg
    assert (clone / ".venv" / "bin" / "registry-client").exists()


@pytest.mark.servers
def test_demo_uses_an_active_virtual_environment(tmp_path: Path) -> None:
    clone = fresh_copy(tmp_path / "clone")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = clean_env(tmp_path, f"{venv}/bin:/usr/bin:/bin", VIRTUAL_ENV=str(venv))
    result = run_demo(clone, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (clone / ".venv").exists()
    assert (venv / "bin" / "registry-client").exists()


def test_missing_venv_module_is_installed_through_apt(tmp_path: Path) -> None:
    """Debian's python3 lacks ensurepip until python3-venv is installed: the scripts
    install it with apt-get, then make the venv (apt-get and python3 stand-ins here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "python3-venv-installed"
    fake_python = bin_dir / "python3"
    fake_python.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = -c ] && [ "$2" = "import ensurepip, venv" ] && [ ! -e {marker} ]; then\n'
        "  exit 1\nfi\n"
        f'exec {sys.executable} "$@"\n'
    )
    apt_log = tmp_path / "apt.log"
    (bin_dir / "apt-get").write_text(
        f'#!/bin/sh\necho "$@" >> {apt_log}\ncase "$*" in *install*) touch {marker};; esac\n'
    )
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    if os.geteuid() != 0:
        pytest.skip("not root: the script would ask sudo")
    script = f"source {ROOT}/scripts/venv.sh; _venv_make {fake_python} {tmp_path}/venv"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "install -y -q --no-install-recommends python3-venv" in apt_log.read_text()
    assert (tmp_path / "venv" / "bin" / "python").exists()


def test_no_venv_module_and_no_apt_is_one_clear_error(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_python = bin_dir / "python3"
    fake_python.write_text(
        f'#!/bin/sh\n[ "$2" = "import ensurepip, venv" ] && exit 1\nexec {sys.executable} "$@"\n'
    )
    fake_python.chmod(0o755)
    for tool in ("bash", "rm", "id", "cat", "dirname"):
        if found := shutil.which(tool):
            (bin_dir / tool).symlink_to(found)
    script = f"source {ROOT}/scripts/venv.sh; _venv_make {fake_python} {tmp_path}/venv"
    result = subprocess.run(
        [str(bin_dir / "bash"), "-c", script],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[0].startswith("error: ")
    assert "hint: " in result.stderr and not (tmp_path / "venv").exists()
