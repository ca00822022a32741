"""Hostile neighbours, for real: a shared node cache and other local users attack a pull.

Each test makes throwaway users and groups (tests/support/users.py; the suite runs as root
in CI, and these tests skip when not root) and runs the victim's and the attacker's
commands as those users with `setpriv`: the attacker plants symlinks and files under the
names a pull will use, replaces published images, holds locks, pre-makes cache folders.
The promise checked every time: the victim's pull exits 0 with the verified image's bytes,
and no file outside the cache changes.

The site: root (the admin) made a shared cache (`[cache] shared = true`, sticky group
folders), a `file` remote holds the images, and the group `lab` has two members: the
victim and the attacker. A third user is in no group of theirs.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry_client import service
from registry_client.cache import Cache, short_id
from registry_client.config import load_config
from registry_client.context import open_context
from registry_client.names import parse_image_ref
from registry_client.remotes import open_remote, remote_for, remote_id
from tests.support.backend_contract import write_random
from tests.support.users import User, Users, need_root

MiB = 1024 * 1024


@dataclass
class Image:
    ref: str
    data: bytes
    sha: str


class Site:
    """Users, a shared cache made by root, a bucket of images, configs."""

    def __init__(self, users: Users) -> None:
        self.users = users
        base = users.base
        self.lab, lab_gid = users.group("lab")
        other, _ = users.group("oth")
        self.victim = users.user("vic", self.lab)
        self.attacker = users.user("att", self.lab)
        self.outsider = users.user("out", other)
        self.shared = base / "shared"
        self.shared.mkdir()
        os.chown(self.shared, 0, lab_gid)
        os.chmod(self.shared, 0o3775)  # as docs/security.md tells the admin
        self.bucket = base / "bucket"
        self.pub = base / "pub"  # where anyone may make folders, like /tmp
        self.pub.mkdir()
        os.chmod(self.pub, 0o1777)
        self.config = base / "site.toml"
        self.config.write_text(
            'default_remote = "lab"\n'
            f'cache_dir = "{self.shared}"\n'
            "[cache]\nshared = true\nuntrusted_wait = 2\n"
            f'[remotes.lab]\ntype = "file"\npath = "{self.bucket}"\n'
        )
        self.private_config = base / "private.toml"
        self.private_config.write_text(
            f'default_remote = "lab"\n[remotes.lab]\ntype = "file"\npath = "{self.bucket}"\n'
        )
        Cache(self.shared, shared=True).ensure()  # root sets the tree up: `cache dir`
        self.images: dict[str, Image] = {}

    def push(self, ref: str, size: int, seed: int) -> Image:
        src = self.users.base / f"src-{seed}.sif"
        data = write_random(src, size, seed=seed)
        ctx = open_context(str(self.config))
        sha = service.push(ctx, str(src), parse_image_ref(ref)).sha256
        for folder, _dirs, files in os.walk(self.bucket):
            os.chmod(folder, 0o755)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o644)
        image = Image(ref, data, sha)
        self.images[ref] = image
        return image

    def pull(self, user: User, *args: str, config: Path | None = None) -> tuple[int, str, str]:
        """`pull --json ARGS` as `user`: exit code, the path it printed, stderr. The digest
        it printed must be the file's."""
        env = {"REGISTRY_CLIENT_CONFIG": str(config or self.config)}
        result = self.users.cli(user, "pull", "--json", *args, env=env)
        if result.returncode != 0:
            return result.returncode, "", result.stderr
        printed = json.loads(result.stdout)
        assert printed["sha256"] == hashlib.sha256(Path(printed["path"]).read_bytes()).hexdigest()
        return 0, printed["path"], result.stderr

    def as_user(self, user: User, script: str) -> int:
        """A shell script run as `user` (the attacker's hands); its exit code."""
        return self.users.run(user, "/bin/sh", "-c", script).returncode

    def version(self, ref: str) -> tuple[str, ...]:
        """What a pull of `ref` names its lock, resume files and etag record by."""
        config = load_config(str(self.config))
        image = parse_image_ref(ref)
        remote = remote_for(config, image)
        backend = open_remote(remote)
        try:
            info = service.stat_image(backend, image)
        finally:
            backend.close()
        return (remote_id(remote), info.key, info.etag or "", str(info.size))

    def shared_path(self, *parts: str) -> Path:
        return self.shared.joinpath("v1", *parts)


@pytest.fixture
def site() -> Iterator[Site]:
    need_root()
    users = Users()
    try:
        yield Site(users)
    finally:
        users.cleanup()


def grp_gid(name: str) -> int:
    import grp

    return grp.getgrnam(name).gr_gid


def precious(path: Path, owner: User, content: bytes = b"precious\n") -> tuple[bytes, int, int]:
    path.write_bytes(content)
    os.chown(path, owner.uid, owner.gid)
    os.chmod(path, 0o644)
    return snapshot(path)


def snapshot(path: Path) -> tuple[bytes, int, int]:
    st = os.lstat(path)
    return path.read_bytes(), stat.S_IMODE(st.st_mode), st.st_uid


def assert_verified(path: str, image: Image, trusted: set[int]) -> None:
    """The path a pull printed: a regular file of a trusted owner, holding the image."""
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode), f"{path} is not a regular file"
    assert st.st_uid in trusted and not st.st_mode & 0o022, (path, st.st_uid, oct(st.st_mode))
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == image.sha


def plant_symlinks(site: Site, image: Image, victim: User, target: Path) -> None:
    """As the attacker: a symlink to `target` under every name the victim's pull of
    `image` will create or open in the shared cache (the names are predictable)."""
    version = site.version(image.ref)
    vid = short_id(*version)
    ref = parse_image_ref(image.ref)
    rid = version[0]
    tag_id = short_id(rid, ref.collection, ref.name, ref.tag)
    u = f"u{victim.uid}"
    names = [
        f"locks/{vid}.lock",
        f"locks/use-{image.sha}.lock",
        f"tmp/{vid}.{u}.resume",
        f"tmp/{vid}.{u}.state",
        f"tmp/{vid}.resume",
        f"tmp/{vid}.state",
        f"etags/{vid}.{u}",
        f"etags/{vid}",
        f"refs/{tag_id}.{u}.json",
        f"sif/sha256/{image.sha}.sif",
        f"sif/sha256/{image.sha}.{u}.sif",
    ]
    legacy = f"refs/{rid}/{ref.collection}/{ref.name}"
    script = [f"mkdir -p {site.shared_path(legacy)}"]
    script += [f"ln -s {target} {site.shared_path(name)}" for name in names]
    script.append(f"ln -s {target} {site.shared_path(legacy, ref.tag + '.json')}")
    assert site.as_user(site.attacker, " && ".join(script)) == 0
    for name in names:
        assert site.shared_path(name).is_symlink()


# -- 3. symlinks planted in the shared cache are never followed ------------------------------


@pytest.mark.parametrize("who", ["member", "root"])
def test_planted_symlinks_are_never_followed(site: Site, who: str) -> None:
    image = site.push("lab/app:1", 3 * MiB + 5, seed=1)
    victim = site.victim if who == "member" else site.users.root
    # The file the attacker wants the victim's pull to truncate, write and chmod 0664.
    target = (victim.home if who == "member" else site.users.base) / "precious"
    before = precious(target, victim)
    plant_symlinks(site, image, victim, target)

    for args in (["lab/app:1"], ["lab/app:1"], [f"lab/app:1@sha256:{image.sha}"]):
        code, path, err = site.pull(victim, *args)
        assert code == 0, err
        assert_verified(path, image, {victim.uid, 0})
        assert snapshot(target) == before  # not truncated, not written, not chmodded
    code, path, err = site.pull(victim, "--offline", "lab/app:1")
    assert code == 0, err
    assert_verified(path, image, {victim.uid, 0})
    assert snapshot(target) == before
    # The member could not replace the attacker's symlink (sticky folder) and went around
    # it; root replaced it with the verified image.
    published = site.shared_path("sif", "sha256", f"{image.sha}.sif")
    assert published.is_symlink() == (who == "member")


# -- 4. a member can neither replace a published image nor have theirs served ---------------


def test_a_member_cannot_replace_a_published_image(site: Site) -> None:
    image = site.push("lab/app:1", 2 * MiB, seed=2)
    code, path, err = site.pull(site.victim, "lab/app:1")
    assert code == 0, err
    bad = site.users.base / "bad.sif"
    bad.write_bytes(os.urandom(len(image.data)))
    os.chmod(bad, 0o644)
    attempts = {
        "remove": f"rm -f {path}",
        "rename": f"mv -f {path} {path}.old",
        "replace": f"cp {bad} {path}.new && mv -f {path}.new {path}",
        "symlink": f"ln -sf {bad} {path}",
        "write": f"chmod u+w {path} || true; cat {bad} > {path}",
        "chmod": f"chmod 0666 {path}",
    }
    for what, script in attempts.items():
        assert site.as_user(site.attacker, script) != 0, f"the attacker could {what} it"
    for args in (["lab/app:1"], [f"lab/app:1@sha256:{image.sha}"], ["--offline", "lab/app:1"]):
        code, again, err = site.pull(site.victim, *args)
        assert code == 0 and again == path, err
        assert_verified(again, image, {site.victim.uid})


@pytest.mark.parametrize("names", ["shared name", "every name"])
def test_bytes_planted_under_an_image_name_are_never_served(site: Site, names: str) -> None:
    image = site.push("lab/app:1", 2 * MiB, seed=3)
    fake = site.users.base / "fake.sif"
    fake.write_bytes(os.urandom(len(image.data)))  # same size: only hashing tells
    os.chmod(fake, 0o644)
    planted = [f"{image.sha}.sif"]
    if names == "every name":  # the victim's own copy's name too: it falls back to $HOME
        planted.append(f"{image.sha}.u{site.victim.uid}.sif")
    folder = site.shared_path("sif", "sha256")
    script = " && ".join(f"cp {fake} {folder / n} && chmod 0444 {folder / n}" for n in planted)
    assert site.as_user(site.attacker, script) == 0

    for args in ([f"lab/app:1@sha256:{image.sha}"], ["lab/app:1"], ["lab/app:1"]):
        code, path, err = site.pull(site.victim, *args)
        assert code == 0, err
        assert_verified(path, image, {site.victim.uid})
        if names == "every name":
            assert path.startswith(str(site.victim.home))
    assert (folder / planted[0]).read_bytes() == fake.read_bytes()  # theirs, untouched


def test_another_members_image_is_copied_and_rehashed_before_use(site: Site) -> None:
    image = site.push("lab/app:1", 2 * MiB, seed=4)
    code, theirs, err = site.pull(site.attacker, "lab/app:1")  # first, and honestly
    assert code == 0, err
    assert os.stat(theirs).st_uid == site.attacker.uid
    code, mine, err = site.pull(site.victim, f"lab/app:1@sha256:{image.sha}")
    assert code == 0, err
    assert mine != theirs and os.stat(mine).st_ino != os.stat(theirs).st_ino
    assert_verified(mine, image, {site.victim.uid})
    # Now the publisher changes their own file: the victim's pulls do not see it.
    assert site.as_user(site.attacker, f"chmod u+w {theirs} && echo evil > {theirs}") == 0
    for args in ([f"lab/app:1@sha256:{image.sha}"], ["lab/app:1"], ["--offline", "lab/app:1"]):
        code, again, err = site.pull(site.victim, *args)
        assert code == 0 and again == mine, err
        assert_verified(again, image, {site.victim.uid})


def test_a_members_records_do_not_steer_another_members_pull(site: Site) -> None:
    one = site.push("lab/app:1", 1 * MiB, seed=5)
    two = site.push("lab/app:2", 1 * MiB, seed=6)
    assert site.pull(site.victim, "lab/app:2")[0] == 0  # the victim has image two cached
    # The attacker writes records that map lab/app:1 to image two, under every name.
    version = site.version(one.ref)
    tag_id = short_id(version[0], "lab", "app", "1")
    record = json.dumps({"ref": "lab/app:1", "sha256": two.sha, "pulled": 9e9, "size": 1 * MiB})
    etag = site.shared_path("etags", short_id(*version))
    legacy = site.shared_path("refs", version[0], "lab", "app")
    script = [
        f"echo {two.sha} > {etag}",
        f"mkdir -p {legacy}",
        f"echo '{record}' > {legacy}/1.json",
    ]
    for uid in (site.victim.uid, site.attacker.uid, 0):
        script.append(f"echo {two.sha} > {etag}.u{uid}")
        script.append(f"echo '{record}' > {site.shared_path('refs', tag_id)}.u{uid}.json")
    assert site.as_user(site.attacker, "; ".join(script) + "; true") == 0
    code, path, err = site.pull(site.victim, "lab/app:1")
    assert code == 0, err
    assert_verified(path, one, {site.victim.uid, 0})
    code, path, err = site.pull(site.victim, "--offline", "lab/app:1")
    assert code == 0, err
    assert_verified(path, one, {site.victim.uid, 0})


@pytest.mark.slow  # waits out the untrusted holder's timeout
def test_a_member_holding_the_locks_only_delays_a_pull(site: Site) -> None:
    image = site.push("lab/app:1", 2 * MiB, seed=7)
    vid = short_id(*site.version(image.ref))
    holder = (
        "import fcntl, os, sys, time\n"
        "fds = []\n"
        "for name in sys.argv[1:]:\n"
        "    fd = os.open(name, os.O_RDWR | os.O_CREAT, 0o666); os.fchmod(fd, 0o666)\n"
        "    fcntl.flock(fd, fcntl.LOCK_EX); fds.append(fd)\n"
        "print('held', flush=True); time.sleep(300)\n"
    )
    locks = site.shared_path("locks")
    proc = site.users.spawn(
        site.attacker,
        "/usr/bin/python3",
        "-c",
        holder,
        str(locks / f"{vid}.lock"),
        str(locks / f"use-{image.sha}.lock"),
    )
    assert proc.stdout.readline().strip() == "held"
    start = time.monotonic()
    code, path, err = site.pull(site.victim, "lab/app:1")
    assert code == 0, err
    assert_verified(path, image, {site.victim.uid})
    code, path, err = site.pull(site.victim, f"lab/app:1@sha256:{image.sha}")
    assert code == 0, err
    took = time.monotonic() - start
    print(f"\ntwo pulls past the attacker's locks: {took:.1f}s")
    assert took < 60  # untrusted_wait = 2 s for the work lock, a moment for the use lock
    assert proc.poll() is None  # the attacker still held them


@pytest.mark.parametrize("planted", ["symlink", "fifo", "hardlink"])
def test_a_planted_use_lock_never_lets_prune_or_max_size_remove_the_image(
    site: Site, planted: str
) -> None:
    """Something that cannot be a lock at `locks/use-<sha>.lock` makes every pull of that
    image go on without its use lock; prune and the max_size trim must then keep it."""
    kept = site.push("lab/a:1", 1 * MiB, seed=50)
    other = site.push("lab/b:1", 1 * MiB, seed=51)
    third = site.push("lab/c:1", 1 * MiB, seed=52)
    lock = site.shared_path("locks", f"use-{kept.sha}.lock")
    own = site.attacker.home / "mine"
    plant = {
        "symlink": f"ln -s {own} {lock}",
        "fifo": f"mkfifo -m 666 {lock}",
        "hardlink": f"touch {own} && chmod 666 {own} && ln {own} {lock}",
    }[planted]
    assert site.as_user(site.attacker, plant) == 0  # the name is predictable: before any pull
    paths = {}
    for image in (kept, other):
        code, paths[image.sha], err = site.pull(site.victim, image.ref)
        assert code == 0, err
        assert_verified(paths[image.sha], image, {site.victim.uid})
    env = {"REGISTRY_CLIENT_CONFIG": str(site.config)}
    pruned = site.users.cli(site.victim, "cache", "prune", "--max-size", "0", "--json", env=env)
    assert pruned.returncode == 0, pruned.stderr
    report = json.loads(pruned.stdout)
    assert report["in_use"] == [f"sha256:{kept.sha}"], report
    assert report["removed"] == [f"sha256:{other.sha}"], report  # prune does remove the rest
    assert not os.path.exists(paths[other.sha])
    assert_verified(paths[kept.sha], kept, {site.victim.uid})
    # The max_size trim after a download: the image with the planted lock stays too.
    trimmed = site.users.base / f"trim-{planted}.toml"
    trimmed.write_text(site.config.read_text().replace("[cache]\n", "[cache]\nmax_size = 1\n"))
    os.chmod(trimmed, 0o644)
    code, path, err = site.pull(site.victim, third.ref, config=trimmed)
    assert code == 0, err
    assert "over max_size" in err and "in use" in err, err
    assert_verified(paths[kept.sha], kept, {site.victim.uid})
    assert_verified(path, third, {site.victim.uid})
    assert os.lstat(lock).st_uid == site.attacker.uid  # the planted name was left alone


# -- 5. a second member of a shared cache pulls the same collection ---------------------------


def test_two_members_pull_tags_of_one_collection(site: Site) -> None:
    images = [site.push(f"lab/app:{tag}", 512 * 1024, seed=10 + tag) for tag in (1, 2)]
    for user, tags in ((site.victim, (1, 2)), (site.attacker, (2, 1)), (site.users.root, (1,))):
        for tag in tags:
            code, path, err = site.pull(user, f"lab/app:{tag}")
            assert code == 0, (user.name, err)
            assert_verified(path, images[tag - 1], {user.uid, 0})
    for user in (site.victim, site.attacker):
        for image in images:
            code, path, err = site.pull(user, "--offline", image.ref)
            assert code == 0, (user.name, err)
            assert_verified(path, image, {user.uid, 0})


# -- 12. -o is a copy; a damaged cached file is no hit -------------------------------------------


def test_writing_to_an_output_or_a_cached_file_never_reaches_another_member(site: Site) -> None:
    image = site.push("lab/app:1", 2 * MiB, seed=12)
    out = site.attacker.home / "app.sif"
    code, path, err = site.pull(site.attacker, "-o", str(out), "lab/app:1")
    assert code == 0 and path == str(out), err
    cached = site.shared_path("sif", "sha256", f"{image.sha}.sif")
    assert os.stat(out).st_ino != os.stat(cached).st_ino and os.stat(cached).st_nlink == 1
    # The member writes to their output, then damages the cached image they published.
    script = (
        f"chmod u+w {out} && echo evil > {out} && chmod u+w {cached} && truncate -s 1000 {cached}"
    )
    assert site.as_user(site.attacker, script) == 0
    for user in (site.victim, site.attacker):  # the publisher's own next pull repairs it
        for args in ([f"lab/app:1@sha256:{image.sha}"], ["lab/app:1"]):
            code, path, err = site.pull(user, *args)
            assert code == 0, err
            assert_verified(path, image, {user.uid, 0})


# -- other local users and badly made shared caches --------------------------------------------


def test_a_user_outside_the_group_reads_trusted_hits_and_pulls_into_their_own_cache(
    site: Site,
) -> None:
    warm = site.push("lab/app:1", 1 * MiB, seed=20)
    cold = site.push("lab/app:2", 1 * MiB, seed=21)
    code, root_path, err = site.pull(site.users.root, "lab/app:1")
    assert code == 0, err
    code, path, err = site.pull(site.outsider, f"lab/app:1@sha256:{warm.sha}")
    assert code == 0 and path == root_path, err  # root's file: trusted, read in place
    code, path, err = site.pull(site.outsider, "lab/app:2")
    assert code == 0, err
    assert path.startswith(str(site.outsider.home))
    assert_verified(path, cold, {site.outsider.uid})
    folder = site.shared_path("sif", "sha256")
    assert site.as_user(site.outsider, f"touch {folder}/x") != 0


def test_a_shared_cache_a_member_made_is_not_used_by_the_others(site: Site) -> None:
    image = site.push("lab/app:1", 1 * MiB, seed=22)
    theirs = site.pub / "made-by-a-member"
    config = site.users.base / "member-made.toml"
    config.write_text(site.config.read_text().replace(str(site.shared), str(theirs)))
    os.chmod(config, 0o644)
    script = f"mkdir -m 3777 {theirs}"
    assert site.as_user(site.attacker, script) == 0
    assert site.pull(site.attacker, "lab/app:1", config=config)[0] == 0
    code, path, err = site.pull(site.victim, "lab/app:1", config=config)
    assert code == 0, err
    assert "not using the shared cache" in err and "owned by" in err
    assert path.startswith(str(site.victim.home))
    assert_verified(path, image, {site.victim.uid})


def test_only_root_sets_up_a_shared_cache_and_takes_back_what_a_member_made(site: Site) -> None:
    """The admin made only the cache folder (install -d -m 3775): members make none of the
    folders inside it (one of theirs would lock the others out); root's `cache dir` makes
    them, or takes over one a member (or an older version) made first."""
    image = site.push("lab/app:1", 1 * MiB, seed=53)
    fresh = site.users.base / "fresh"
    fresh.mkdir()
    os.chown(fresh, 0, grp_gid(site.lab))
    os.chmod(fresh, 0o3775)
    config = site.users.base / "fresh.toml"
    config.write_text(site.config.read_text().replace(str(site.shared), str(fresh)))
    os.chmod(config, 0o644)
    hint = f"as root, registry-client --cache-dir {fresh} cache dir"
    code, path, err = site.pull(site.victim, "lab/app:1", config=config)
    assert code == 0 and path.startswith(str(site.victim.home)), err
    assert "not using the shared cache" in err and "not made yet" in err and hint in err, err
    assert_verified(path, image, {site.victim.uid})
    assert not (fresh / "v1").exists()  # the member made nothing in the admin's folder
    # A member makes v1 first (as this tool's older versions did on a first pull).
    assert site.as_user(site.attacker, f"mkdir -m 3775 {fresh}/v1") == 0
    code, path, err = site.pull(site.victim, "lab/app:1", config=config)
    assert code == 0 and path.startswith(str(site.victim.home)), err
    assert f"owned by {site.attacker.name}" in err and hint in err, err
    setup = site.users.cli(
        site.users.root, "cache", "dir", env={"REGISTRY_CLIENT_CONFIG": str(config)}
    )
    assert setup.returncode == 0 and setup.stdout.strip() == str(fresh), setup.stderr
    assert "warning" not in setup.stderr, setup.stderr
    for folder in [fresh / "v1", *(p for p in (fresh / "v1").rglob("*") if p.is_dir())]:
        st = os.lstat(folder)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o3775), folder
    assert site.as_user(site.attacker, f"rmdir {fresh}/v1/quarantine") != 0  # no longer theirs
    second = site.push("lab/app:2", 1 * MiB, seed=54)  # the victim holds no copy of its own
    for user in (site.attacker, site.victim):
        code, path, err = site.pull(user, second.ref, config=config)
        assert code == 0 and path.startswith(str(fresh / "v1" / "sif")), err
        assert "not using the shared cache" not in err, err
        assert_verified(path, second, {user.uid, 0})


# -- 10. a cache folder someone else made or may change is refused ------------------------------


def test_a_cache_folder_someone_else_made_is_refused(site: Site) -> None:
    image = site.push("lab/app:1", 1 * MiB, seed=30)
    base = site.users.base
    fake = base / "fake.sif"
    fake.write_bytes(os.urandom(len(image.data)))
    os.chmod(fake, 0o644)
    theirs, link, mine_open, nested = (site.pub / n for n in ("x", "y", "z", "attic"))
    # The attacker's own folder, pre-filled to serve their bytes; a symlink to it; and an
    # ancestor folder the attacker owns. The victim's own folder, open to everyone.
    script = (
        f"mkdir -p {theirs}/v1/sif/sha256 && chmod -R 0777 {theirs} && "
        f"cp {fake} {theirs}/v1/sif/sha256/{image.sha}.sif && ln -s {theirs} {link} && "
        f"mkdir -m 0777 {nested}"
    )
    assert site.as_user(site.attacker, script) == 0
    assert site.as_user(site.victim, f"mkdir -m 0777 {mine_open}") == 0
    pin = f"lab/app:1@sha256:{image.sha}"
    for folder in (theirs, link, mine_open, nested / "cache"):
        result = site.users.cli(
            site.victim,
            "--cache-dir",
            str(folder),
            "pull",
            pin,
            env={"REGISTRY_CLIENT_CONFIG": str(site.private_config)},
        )
        assert result.returncode == 5, (folder, result.stderr)
        assert result.stdout == "" and "refusing the cache" in result.stderr
        assert "hint:" in result.stderr and "Traceback" not in result.stderr
    # A folder that does not exist yet is made, private.
    fresh = site.pub / "fresh" / "cache"
    assert site.as_user(site.victim, f"mkdir -m 0700 {site.pub / 'fresh'}") == 0
    result = site.users.cli(
        site.victim,
        "--cache-dir",
        str(fresh),
        "pull",
        pin,
        env={"REGISTRY_CLIENT_CONFIG": str(site.private_config)},
    )
    assert result.returncode == 0, result.stderr
    assert_verified(result.stdout.strip(), image, {site.victim.uid})
    for folder in (fresh, fresh / "v1", fresh / "v1" / "tmp"):
        st = os.stat(folder)
        assert st.st_uid == site.victim.uid and stat.S_IMODE(st.st_mode) == 0o700, folder


def test_a_read_only_shared_cache_a_service_account_fills(site: Site) -> None:
    warm = site.push("lab/app:1", 1 * MiB, seed=40)
    cold = site.push("lab/app:2", 1 * MiB, seed=41)
    svc_group, _ = site.users.group("svc")
    svc = site.users.user("svc", svc_group)  # a group of its own: nobody else may write
    filled = site.pub / "images"
    account = site.users.base / "svc.toml"
    account.write_text(site.config.read_text().replace(str(site.shared), str(filled)))
    users = site.users.base / "ro.toml"
    users.write_text(
        account.read_text().replace(
            "shared = true\n", f'shared = true\ntrusted_users = ["{svc.name}"]\n'
        )
    )
    code, warmed, err = site.pull(svc, "lab/app:1", config=account)  # `cache warm` would do
    assert code == 0, err
    assert stat.S_IMODE(os.stat(filled / "v1" / "sif" / "sha256").st_mode) == 0o3775
    for user in (site.victim, site.outsider):
        code, path, err = site.pull(user, f"lab/app:1@sha256:{warm.sha}", config=users)
        assert code == 0 and path == warmed, err  # the account's file, used in place
        code, path, err = site.pull(user, "lab/app:2", config=users)
        assert code == 0 and path.startswith(str(user.home)), err
        assert_verified(path, cold, {user.uid})
    assert site.as_user(site.attacker, f"touch {filled}/v1/sif/sha256/x") != 0
