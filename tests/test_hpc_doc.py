"""docs/hpc.md, run: every command and file of it, in order, as an admin's shell session.

Its group-shared cache recipe is run on its own (test_the_shared_cache_recipe_serves_two_members):
its root commands as root, its member command as two real throwaway members of one group.

The doc's paths are mapped into a temporary folder (the SUBSTITUTIONS below), the store
is a loopback S3 server (moto) behind the fault proxy, and stand-ins play the parts not
installed here: `apptainer` (checks the SIF header of the image it is given, then runs the
command), `sbatch` (runs the job script, its array tasks at once, output in slurm-*.out)
and `srun` (runs the command). The site file is found through REGISTRY_CLIENT_SITE_CONFIG,
as /etc is not ours to write. Lmod is Debian's (`.ci/install-system-deps`), pipx is PyPI's.
"""

from __future__ import annotations

import grp
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import new_bucket
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.users import Users, need_root

pytestmark = pytest.mark.servers

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "hpc.md"
LMOD_INIT = Path("/usr/share/lmod/lmod/init/bash")
OUTAGE = "# the store is down"
FILE_MARK = re.compile(r"^(?:#|--) file: (\S+)", re.M)
SHARED = re.compile(
    r"<!-- shared-cache recipe .*?-->\n(.*?)<!-- end of the shared-cache recipe -->", re.S
)

APPTAINER = r"""#!/bin/sh
# stand-in for `apptainer exec IMAGE COMMAND...`: the image must be a SIF file
[ "$1" = exec ] || { echo "apptainer stand-in: only exec" >&2; exit 2; }
image=$2; shift 2
[ -f "$image" ] || { echo "apptainer: $image: no such file" >&2; exit 255; }
magic=$(dd if="$image" bs=1 skip=32 count=9 2>/dev/null)
[ "$magic" = SIF_MAGIC ] || { echo "apptainer: $image is not a SIF image" >&2; exit 255; }
exec "$@"
"""

SBATCH = r"""#!PYTHON
# stand-in for sbatch SCRIPT: runs it here, array tasks at once; output in slurm-*.out
import os, re, subprocess, sys
script = sys.argv[-1]
text = open(script).read()
array = re.search(r"^#SBATCH --array=(\d+)-(\d+)", text, re.M)
job = str(4000 + len([p for p in os.listdir(".") if p.startswith("slurm-")]))
tasks = range(int(array[1]), int(array[2]) + 1) if array else [None]
procs = []
for task in tasks:
    env = {**os.environ, "SLURM_JOB_ID": job}
    out = f"slurm-{job}.out" if task is None else f"slurm-{job}_{task}.out"
    if task is not None:
        env["SLURM_ARRAY_TASK_ID"] = str(task)
    log = open(out, "w")
    procs.append(subprocess.Popen(["bash", script], env=env, stdout=log, stderr=log))
print(f"Submitted batch job {job}")
sys.exit(max(p.wait() for p in procs))
"""

SRUN = r"""#!/bin/sh
# stand-in for srun [OPTIONS] COMMAND...: one task, here
while [ "${1#-}" != "$1" ]; do shift; done
exec "$@"
"""


def substitutions(tmp: Path, proxy_url: str, bucket: str) -> dict[str, str]:
    return {
        "/opt/src/registry-client": str(ROOT),
        "/opt/registry-client": str(tmp / "opt" / "registry-client"),
        "/opt/modulefiles": str(tmp / "opt" / "modulefiles"),
        "/etc/": str(tmp / "etc") + "/",
        "/local/scratch": str(tmp / "scratch"),
        "https://s3.example.org": proxy_url,
        "hpc-images": bucket,
        "hpcusers": grp.getgrgid(os.getgid()).gr_name,
    }


def blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"```(\w*)\n(.*?)```", text, re.S)


def main_text() -> str:
    """The doc as one admin's session: without the shared-cache recipe (run on its own)."""
    return SHARED.sub("", DOC.read_text())


def shared_recipe() -> list[tuple[str, str]]:
    found = SHARED.findall(DOC.read_text())
    assert len(found) == 1, "docs/hpc.md: the shared-cache recipe's markers are gone"
    return blocks(found[0])


def substituted(body: str, subs: dict[str, str]) -> str:
    for old, new in subs.items():
        body = body.replace(old, new)
    return body


def script_of(lang: str, body: str) -> str:
    """One block as shell: a `file:` block writes its file, a TOML example is checked, a
    sh/bash block runs."""
    mark = FILE_MARK.search("\n".join(body.splitlines()[:2]))
    if mark:
        path = mark.group(1)
        script = f"mkdir -p \"$(dirname {path})\"\ncat > {path} <<'__DOC__'\n{body}__DOC__\n"
        return script + (f"chmod +x {path}\n" if body.startswith("#!") else "")
    if lang == "toml":
        return f"rc_check_toml <<'__DOC__'\n{body}__DOC__\n"
    if lang in ("sh", "bash"):
        return f"echo '+ {body.splitlines()[0][:60]}' >&2\n{body}\n"
    return ""


def session(subs: dict[str, str]) -> tuple[str, str]:
    """The doc as two shell scripts: before the outage, and from it on."""
    parts = ["", ""]
    part = 0
    for lang, body in blocks(main_text()):
        body = substituted(body, subs)
        if OUTAGE in body:
            part = 1
        parts[part] += script_of(lang, body)
    return parts[0], parts[1]


def standins(folder: Path) -> None:
    folder.mkdir()
    for name, text in (("apptainer", APPTAINER), ("sbatch", SBATCH), ("srun", SRUN)):
        (folder / name).write_text(text.replace("#!PYTHON", f"#!{sys.executable}"))
        (folder / name).chmod(0o755)
    # A TOML block that is an example (not a file to write) must still be a valid config.
    check = folder / "rc_check_toml"
    check.write_text(
        f"#!{sys.executable}\nimport sys, tomllib\n"
        "from registry_client.config import check_document\n"
        "check_document('docs/hpc.md', tomllib.loads(sys.stdin.read()))\n"
    )
    check.chmod(0o755)


@pytest.fixture
def pipx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tools = tmp_path_factory.mktemp("tools")
    subprocess.run([sys.executable, "-m", "venv", str(tools)], check=True, timeout=300)
    subprocess.run(
        [str(tools / "bin" / "python"), "-m", "pip", "install", "-q", "pipx"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return tools / "bin"


def run(script: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail\n{script}"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=1500,
    )


@pytest.mark.skipif(
    not LMOD_INIT.exists(), reason="Lmod is not installed (.ci/install-system-deps)"
)
def test_every_recipe_of_the_hpc_doc_runs(moto_server: Any, tmp_path: Path, pipx: Path) -> None:
    from registry_client.sif import make_test_sif

    bucket = new_bucket(moto_server)
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "scratch").mkdir(mode=0o1777)
    (tmp_path / "scratch").chmod(0o1777)
    make_test_sif(work / "app.sif", 4 << 20, seed=11)
    standins(tmp_path / "standin")
    with FaultProxy(moto_server.s3_endpoint) as proxy:
        subs = substitutions(tmp_path, proxy.url, bucket)
        before, after = session(subs)
        user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        env = {
            "PATH": f"{tmp_path / 'standin'}:{pipx}:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(tmp_path / "home"),
            "USER": user,
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(ROOT),  # for the rc_check_toml stand-in
            "REGISTRY_CLIENT_SITE_CONFIG": subs["/etc/"] + "registry-client/config.toml",
            "AWS_ACCESS_KEY_ID": moto_server.access_key,
            "AWS_SECRET_ACCESS_KEY": moto_server.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "PIP_CACHE_DIR": str(Path.home() / ".cache" / "pip"),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
        state = tmp_path / "session.env"
        first = run(f"source {LMOD_INIT}\n{before}\nexport -p > {state}\n", env, work)
        assert first.returncode == 0, first.stderr[-4000:]
        # 8 array tasks at once, staging, prolog: the store served the image exactly once
        served = proxy.stats.get_bytes_matching("lab/app")
        proxy.reset_stats()
        proxy.add_fault(Fault.status(503, times=None, method=None, retry_after=0))
        second = run(f"source {state}\n{after}", env, work)
        assert second.returncode == 0, second.stderr[-4000:]

    out = first.stdout
    assert served == (work / "app.sif").stat().st_size
    assert "Traceback" not in first.stderr + second.stderr
    assert "registry-client 0.1.0" in out
    site = subs["/etc/"] + "registry-client/config.toml"
    assert site in out  # remote ls shows where the site remote comes from
    cache = tmp_path / "scratch" / user / "registry-client"
    assert str(cache) in out  # cache dir: the site's, per user
    lock = (work / "images.lock").read_text().strip()
    assert re.fullmatch(r"lab/app:1\.2@sha256:[0-9a-f]{64}", lock), lock
    tasks = sorted(work.glob("slurm-*_*.out"))
    assert len(tasks) == 8
    for task in tasks:
        text = task.read_text()
        assert re.search(rf"task \d ran in {cache}/v1/sif/sha256/[0-9a-f]{{64}}\.sif", text), text
    staged = [p.read_text() for p in work.glob("slurm-*.out") if "_" not in p.name]
    assert staged and "staged run" in staged[0]
    assert (tmp_path / "opt/registry-client/share/man/man1/registry-client.1").stat().st_size
    assert (
        "_REGISTRY_CLIENT_COMPLETE"
        in (tmp_path / "etc/bash_completion.d/registry-client").read_text()
    )
    assert "lab/app:1.2" in out  # cache ls after the prolog

    assert "warning: the store is unreachable" in second.stderr
    assert "exit 6 (not cached on this node)" in second.stdout
    assert (work / "app.sif").read_bytes() == Path(second.stdout.splitlines()[0]).read_bytes()


def test_the_shared_cache_recipe_serves_two_members(moto_server: Any) -> None:
    """docs/hpc.md's group-shared cache, exactly as it says: the site file and the commands
    as root, then its member command by two real members of the group. The second uses the
    first one's download (no private fallback), and the store serves the image once."""
    from registry_client.sif import make_test_sif

    need_root()
    users = Users()
    try:
        group, _ = users.group("hpc")
        members = [users.user(role, group) for role in ("ann", "bob")]
        base = users.base
        (base / "scratch").mkdir(mode=0o755)
        image = base / "app.sif"
        make_test_sif(image, 4 << 20, seed=12)
        image.chmod(0o644)
        tools = base / "bin"  # the CLI as every user runs it (tests/support/users.py)
        tools.mkdir(mode=0o755)
        (tools / "registry-client").write_text(
            f'#!/bin/sh\nexec {shlex.join(users.python())} "$@"\n'
        )
        (tools / "registry-client").chmod(0o755)
        bucket = new_bucket(moto_server)
        env = {
            "PATH": f"{tools}:/usr/bin:/bin:/usr/sbin:/sbin",
            "REGISTRY_CLIENT_SITE_CONFIG": f"{base}/etc/registry-client/config.toml",
            "AWS_ACCESS_KEY_ID": moto_server.access_key,
            "AWS_SECRET_ACCESS_KEY": moto_server.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        direct = {k: v for k, v in env.items() if "SITE" not in k}  # before the site file
        direct["AWS_ENDPOINT_URL"] = moto_server.s3_endpoint
        pushed = users.cli(users.root, "push", str(image), f"s3://{bucket}/lab/app:1.2", env=direct)
        assert pushed.returncode == 0, pushed.stderr
        recipe = shared_recipe()
        *as_root, (_, member_block) = recipe
        assert "registry-client pull lab/app:1.2" in member_block, member_block
        with FaultProxy(moto_server.s3_endpoint) as proxy:
            subs = {
                "/etc/": f"{base}/etc/",
                "/local/scratch": f"{base}/scratch",
                "https://s3.example.org": proxy.url,
                "hpc-images": bucket,
                "hpcusers": group,
            }
            admin = "".join(script_of(lang, substituted(body, subs)) for lang, body in as_root)
            setup = users.run(users.root, "bash", "-c", f"set -euo pipefail\n{admin}", env=env)
            assert setup.returncode == 0, setup.stderr
            assert "warning" not in setup.stderr, setup.stderr
            cache = base / "scratch" / f"registry-client-{group}"
            assert setup.stdout.strip() == str(cache)
            script = f"set -euo pipefail\n{substituted(member_block, subs)}"
            printed = []
            for member in members:
                pulled = users.run(member, "bash", "-c", script, env=env)
                assert pulled.returncode == 0, (member.name, pulled.stderr)
                assert "not using the shared cache" not in pulled.stderr, pulled.stderr
                printed.append(Path(pulled.stdout.strip()))
            served = proxy.stats.get_bytes_matching("lab/app")
        folder = cache / "v1" / "sif" / "sha256"
        assert [p.parent for p in printed] == [folder, folder], printed
        assert all(p.read_bytes() == image.read_bytes() for p in printed)
        assert served == image.stat().st_size  # one download served both members
    finally:
        users.cleanup()
