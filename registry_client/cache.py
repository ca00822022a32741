"""The node cache: content-addressed, verified, published by one atomic rename, and safe
against the other users of the machine (docs/security.md).

Layout (docs/cache.md, version 1):

    ROOT/CACHEDIR.TAG
    ROOT/v1/sif/sha256/<hex>.sif          published images, whole and verified, mode 0444
    ROOT/v1/sif/sha256/<hex>.u<uid>.sif   a shared cache member's own verified copy
    ROOT/v1/blobs/sha256/<hex>[.u<uid>]   docker:// layer and config blobs, the same way
    ROOT/v1/refs/<id>.u<uid>.json         what a tag last resolved to, for one user
    ROOT/v1/etags/<id>.u<uid>             sha256 of an object version, for one user
    ROOT/v1/tmp/...                       downloads in progress (same filesystem as sif/)
    ROOT/v1/locks/<id>.lock               work and use locks: they save work, never correctness
    ROOT/v1/quarantine/                   entries `cache verify` found damaged

Correctness never depends on a lock: a temp name is unique per process, a file is only
renamed into sif/ after it was verified, and its name is its sha256, so two publishers of
one name publish identical bytes.

Safety. The folders are opened once, walking from `/` without following a symlink, and
refused unless the invoking user, root or a configured trusted user owns each of them and
nobody else may change them (writable by others only with the sticky bit). Every file is
then named relative to those descriptors: created with O_EXCL, opened with O_NOFOLLOW,
checked with fstat. (The transfer engine's download file and `pull -o`'s source are
opened by their checked path, O_NOFOLLOW: nobody else may change a folder on the way.)
A published file serves as a hit only while it is a regular file of a trusted owner that
nobody else may write, of the size the server reports. In a shared
cache another member's image is copied and re-hashed before use, and whatever another
member's files block (a name, a record) goes to the user's own private cache (`fallback`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry_client import locks, safefs
from registry_client.errors import AuthError, RegistryClientError
from registry_client.names import is_sha256

LAYOUT = "v1"
CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by registry-client.\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)
# Every folder, parents first; all are made (and checked) when the cache is first used,
# so in a shared cache no member ever owns one of them.
TREE = ("sif", "sif/sha256", "blobs", "blobs/sha256", "refs", "etags", "tmp", "locks", "quarantine")
FOLDER = {"sif": "sif/sha256", "blobs": "blobs/sha256"}  # entry kind -> its folder
WRITTEN = ("sif/sha256", "blobs/sha256", "refs", "etags", "tmp", "locks")
UNTRUSTED_WAIT = 60.0  # seconds to wait for a download another (untrusted) user holds
RECORD_LIMIT = 1 << 20  # refs and etags records are small; anything larger is not ours
STATE_LIMIT = 64 << 20


def short_id(*parts: str) -> str:
    """A stable, filesystem-safe id for arbitrary text (remote locations, keys, etags)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class CacheEntry:
    sha256: str
    path: Path
    size: int
    atime: float
    mtime: float
    owner: int = -1
    kind: str = "sif"


class Cache:
    """One cache root. `shared`: one cache for the users of a group (sticky folders);
    `trusted_users`: uids whose files count as verified, besides the user and root;
    `fallback`: the user's private cache, for whatever a shared one cannot hold for us."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        shared: bool = False,
        locking: bool = True,
        trusted_users: tuple[int, ...] = (),
        untrusted_wait: float = UNTRUSTED_WAIT,
        fallback: Cache | None = None,
    ) -> None:
        self.root = Path(root).absolute()
        self.base = self.root / LAYOUT
        self.shared = shared
        self.locking = locking
        self.uid = os.geteuid()
        self.trusted = frozenset({0, self.uid, *trusted_users})
        self.untrusted_wait = untrusted_wait
        self.fallback = fallback
        self.notices: list[str] = []
        self.on_notice: Callable[[str], None] | None = None
        self._dir_mode = 0o3775 if shared else 0o700
        self._file_mode = 0o664 if shared else 0o600  # lock files: every member opens them
        self._fds: dict[str, int] = {}
        self._state: str | None = None  # "ok", "readonly" or "unusable" once opened
        self._strict = shared  # hard links count against a file (set when others may write)
        self._guard = threading.Lock()
        weakref.finalize(self, _close_all, self._fds)

    # -- setup ------------------------------------------------------------------------
    def ensure(self) -> None:
        """Open the cache (making it if missing) and check every folder of it; AuthError
        (exit 5) for a private cache someone else owns or may change. A shared cache that
        fails the checks, or that we may not write, leaves the work to `fallback`."""
        if self._state is not None:
            return
        with self._guard:
            if self._state is None:
                self._state = self._open()

    def _open(self) -> str:
        try:
            self._open_tree()
        except (safefs.UnsafePath, OSError) as exc:
            _close_all(self._fds)
            denied = (errno.EACCES, errno.EPERM, errno.EROFS)
            if not isinstance(exc, safefs.UnsafePath) and exc.errno not in denied:
                raise
            reason = str(exc) if isinstance(exc, safefs.UnsafePath) else "not writable by you"
            if self.shared and self.fallback is not None:
                self._notice(
                    f"not using the shared cache at {self.root}: {reason}; "
                    f"using your own at {self.fallback.root}{self._setup_hint(exc)}"
                )
                return "unusable"
            raise self._refusal(exc) from None
        if self.shared and not all(os.access(".", os.W_OK, dir_fd=self._fds[f]) for f in WRITTEN):
            return "readonly"
        self._write_tag()
        return "ok"

    def _open_tree(self) -> None:
        real = Path(os.path.realpath(self.root))
        if real == real.parent:
            raise safefs.UnsafePath(real, "the file system root")
        # Folders we make above the root: private for a private cache, traversable for a
        # shared one. The root and its tree get the cache's own mode.
        parent = safefs.open_path(real.parent, self.trusted, 0o755 if self.shared else 0o700)
        try:
            fd = safefs.open_dir(parent, real.name, real, self._dir_mode)
        finally:
            os.close(parent)
        self._fds["."] = fd
        self._check(fd, real)
        self._tree_folder(LAYOUT, fd, LAYOUT, real / LAYOUT)
        for rel in TREE:
            head, _, name = rel.rpartition("/")
            self._tree_folder(rel, self._fds[head or LAYOUT], name, real / LAYOUT / rel)
        # From here on, paths handed out are the checked ones, free of symlinks.
        self.root, self.base = real, real / LAYOUT

    def _tree_folder(self, key: str, parent_fd: int, name: str, label: Path) -> None:
        """Open (or make) one folder of the tree and check it.

        In a shared cache only root and the owner of the folder above make them: a folder's
        owner may remove or replace anything in it, sticky bit or not, so no member may
        trust a folder another member made. Root takes such a folder over (an admin who
        ran `cache dir` after a member's first pull); anyone else goes to their fallback."""
        above = os.fstat(parent_fd)
        may_make = not self.shared or self.uid in (0, above.st_uid)
        try:
            fd = safefs.open_dir(parent_fd, name, label, self._dir_mode if may_make else None)
        except FileNotFoundError:
            if may_make:
                raise
            raise safefs.UnsafePath(label, "not made yet (root makes it)") from None
        self._fds[key] = fd
        if self.shared and self.uid == 0 and os.fstat(fd).st_uid not in self.trusted:
            os.fchown(fd, 0, above.st_gid)  # nobody but root may change it from now on
            os.fchmod(fd, self._dir_mode)
        self._check(fd, label)

    def _check(self, fd: int, label: Path) -> None:
        st = os.fstat(fd)
        missing_sticky = st.st_mode & safefs.OTHERS_WRITE and not st.st_mode & stat.S_ISVTX
        if self.shared and missing_sticky and st.st_uid == self.uid:
            # A shared cache an older version made: from now on no member may replace,
            # rename or remove another member's files.
            os.fchmod(fd, stat.S_IMODE(st.st_mode) | stat.S_ISVTX)
            st = os.fstat(fd)
        safefs.check_folder(st, label, self.trusted)
        if st.st_mode & safefs.OTHERS_WRITE:
            self._strict = True

    def _setup_hint(self, exc: Exception) -> str:
        """How the admin fixes a shared cache whose folders root has not made (or a member
        made first)."""
        base = Path(os.path.realpath(self.root)) / LAYOUT
        inside = isinstance(exc, safefs.UnsafePath) and base in (exc.path, *exc.path.parents)
        if not inside or self.uid == 0:
            return ""
        return (
            f" (the admin sets it up: as root, registry-client --cache-dir {self.root} cache dir)"
        )

    def _refusal(self, exc: Exception) -> AuthError:
        if isinstance(exc, safefs.UnsafePath):
            return AuthError(
                f"refusing the cache at {self.root}: {exc}",
                hint=f"use a cache folder only you can write (chmod 700 {exc.path}), "
                "or choose another with --cache-dir",
            )
        return AuthError(
            f"cannot write the cache at {self.root}: permission denied",
            hint="choose another with --cache-dir",
        )

    def _write_tag(self) -> None:
        with contextlib.suppress(OSError):
            safefs.create_new(self._fds["."], "CACHEDIR.TAG", CACHEDIR_TAG.encode(), 0o644)

    def _notice(self, message: str) -> None:
        self.notices.append(message)
        if self.on_notice is not None:
            self.on_notice(message)

    def _layers(self) -> Iterator[Cache]:
        """The caches hits may come from: this one (unless unusable), then the fallback
        (opened only when asked for, and only once it exists: reads never make it)."""
        self.ensure()
        if self._state != "unusable":
            yield self
        fallback = self.fallback
        if fallback is not None and (self._state == "unusable" or fallback.exists()):
            try:
                fallback.ensure()
            except AuthError as exc:
                if self._state == "unusable":
                    raise
                self._notice(f"{exc}; using the shared cache alone")
                return
            yield fallback

    def exists(self) -> bool:
        """Whether the cache was opened, or its folder is there to open (a hint only: the
        opening checks it)."""
        return self._state is not None or os.path.isdir(self.root)

    def _store(self) -> Cache:
        """The cache that takes our writes: this one, or the fallback when we may not."""
        self.ensure()
        if self._state == "ok":
            return self
        if self.fallback is None:
            raise self._refusal(PermissionError(errno.EACCES, "read-only"))
        self.fallback.ensure()
        return self.fallback

    def _fd(self, folder: str) -> int:
        self.ensure()
        return self._fds[folder]

    def _own(self, owner: int) -> bool:
        """May we remove or replace a file of this owner? (sticky folders keep the others')"""
        return not self.shared or owner == self.uid or self.uid == 0

    # -- published images and blobs ------------------------------------------------------
    def image_path(self, sha256: str) -> Path:
        return self.base / "sif" / "sha256" / f"{sha256}.sif"

    def blob_path(self, sha256: str) -> Path:
        return self.base / "blobs" / "sha256" / sha256

    def _names(self, kind: str, sha256: str) -> list[str]:
        """Where an entry may be: the shared name, then (shared cache) the user's own copy."""
        suffix = ".sif" if kind == "sif" else ""
        names = [f"{sha256}{suffix}"]
        if self.shared:
            names.append(f"{sha256}.u{self.uid}{suffix}")
        return names

    def _trusted(self, st: os.stat_result | None, size: int | None) -> bool:
        return st is not None and safefs.trusted_file(
            st, self.trusted, size=size, one_link=self._strict
        )

    def _candidates(self, kind: str, sha256: str, size: int | None) -> Iterator[CacheEntry]:
        """Trusted files holding this entry, in every layer, in the order to use them."""
        for cache in self._layers():
            folder = cache._fds[FOLDER[kind]]
            for name in cache._names(kind, sha256):
                st = safefs.lstat_at(folder, name)
                if st is not None and cache._trusted(st, size):
                    yield cache._entry(kind, sha256, name, st)

    def _entry(self, kind: str, sha256: str, name: str, st: os.stat_result) -> CacheEntry:
        path = self.base / FOLDER[kind] / name
        return CacheEntry(sha256, path, st.st_size, st.st_atime, st.st_mtime, st.st_uid, kind)

    def lookup_entry(
        self, sha256: str | None, size: int | None = None, kind: str = "sif"
    ) -> CacheEntry | None:
        """A verified entry to hand out, its use recorded (for pruning); None when not
        cached. `size`: what the server reports, when it does."""
        if not is_sha256(sha256):
            return None
        assert sha256 is not None
        found = next(self._candidates(kind, sha256, size), None)
        if found is None and self.shared:
            found = self._adopt(kind, sha256, size)
        if found is not None:
            self.touch(found.path)
        return found

    def lookup(self, sha256: str | None, size: int | None = None) -> Path | None:
        entry = self.lookup_entry(sha256, size)
        return entry.path if entry else None

    def lookup_blob(
        self, sha256: str, size: int | None = None, *, verify: bool = False
    ) -> Path | None:
        """A cached layer blob; with verify, re-hashed first, and a damaged one moved to
        quarantine/ (so the caller fetches it again)."""
        if not verify:
            entry = self.lookup_entry(sha256, size, "blobs")
            return entry.path if entry else None
        if not is_sha256(sha256):
            return None
        for entry in [*self._candidates("blobs", sha256, size)]:
            if self._hash_entry(entry) == sha256:
                return entry.path
            moved = self.quarantine(entry)
            self._notice(
                f"cached layer blob sha256:{sha256} is damaged"
                + (f"; moved to {moved}" if moved else "")
            )
        found = self._adopt("blobs", sha256, size) if self.shared else None
        return found.path if found else None

    def _hash_entry(self, entry: CacheEntry) -> str | None:
        layer, folder = self._locate(entry.path)
        try:
            fd = os.open(entry.path.name, safefs.READ_FLAGS, dir_fd=folder)
        except OSError:
            return None
        try:
            return _sha256_of(fd)
        finally:
            os.close(fd)

    def _adopt(self, kind: str, sha256: str, size: int | None) -> CacheEntry | None:
        """Another member's file under the shared name: copied into a file of our own and
        re-hashed, so that nothing its owner does later changes what we hand out."""
        if self._state == "unusable":
            return None
        folder = self._fds[FOLDER[kind]]
        try:
            src = os.open(self._names(kind, sha256)[0], safefs.READ_FLAGS, dir_fd=folder)
        except OSError:
            return None
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode) or (size is not None and st.st_size != size):
                return None
            store = self._store()
            with store.temp_file("copy") as tmp:
                out = os.open(tmp.name, safefs.NEW_FLAGS, 0o600, dir_fd=store._fds["tmp"])
                try:
                    safefs.clone_or_copy(src, out)
                    actual = _sha256_of(out)
                finally:
                    os.close(out)
                if actual != sha256:
                    self._notice(
                        f"ignoring {self.base / FOLDER[kind] / self._names(kind, sha256)[0]} "
                        f"of {safefs.owner_name(st.st_uid)}: its content is not sha256:{sha256}"
                    )
                    return None
                store._publish_here(kind, tmp.name, sha256, False)
        finally:
            os.close(src)
        return next(self._candidates(kind, sha256, size), None)

    def publish(self, tmp: Path, sha256: str, *, replace: bool = False) -> Path:
        """Make a verified temp file visible under its content address, atomically.

        A hard link never replaces: if another process (no working locks on a shared
        filesystem) published the same address first, its file stays and ours goes —
        unless `replace` (pull --force) or that file is not one we can trust.
        Filesystems without hard links get a rename, which is atomic too.
        """
        return self._publish("sif", tmp, sha256, replace)

    def publish_blob(self, tmp: Path, sha256: str, *, replace: bool = False) -> Path:
        """A verified blob, published like an image: same checks, same atomic rename."""
        return self._publish("blobs", tmp, sha256, replace)

    def _publish(self, kind: str, tmp: Path, sha256: str, replace: bool) -> Path:
        if not is_sha256(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        for cache in (self, self.fallback):
            if cache is not None and cache._state == "ok" and tmp.parent == cache.base / "tmp":
                return cache._publish_here(kind, tmp.name, sha256, replace)
        raise ValueError(f"{tmp} is not a temp file of the cache at {self.root}")

    def _publish_here(self, kind: str, name: str, sha256: str, replace: bool) -> Path:
        tmp_dir, folder = self._fds["tmp"], self._fds[FOLDER[kind]]
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=tmp_dir)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != self.uid:
                raise AuthError(f"{self.base / 'tmp' / name} is not a file of yours")
            os.fsync(fd)
            os.fchmod(fd, 0o444)
        finally:
            os.close(fd)
        for final in self._names(kind, sha256):
            if self._place(name, final, st.st_size, replace, folder):
                safefs.fsync_dir(folder)
                return self.base / FOLDER[kind] / final
        # Other members' files hold every name we may use here: keep a copy of our own.
        if self.fallback is None:
            raise AuthError(
                f"cannot publish sha256:{sha256} in {self.root}: other users' files hold its names",
                hint="ask the cache's admin to run `registry-client cache verify` as root",
            )
        try:
            return self.fallback._copy_in(kind, tmp_dir, name, sha256)
        finally:
            safefs.unlink_at(tmp_dir, name)

    def _place(self, name: str, final: str, size: int, replace: bool, folder: int) -> bool:
        """Link the temp file `name` in as `final`; whether `final` now holds it (or a
        trusted, identical file)."""
        tmp_dir = self._fds["tmp"]
        try:
            os.link(name, final, src_dir_fd=tmp_dir, dst_dir_fd=folder, follow_symlinks=False)
        except FileExistsError:
            if not replace and self._trusted(safefs.lstat_at(folder, final), size):
                safefs.unlink_at(tmp_dir, name)
                return True
            return self._rename(name, final, folder)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            return self._rename(name, final, folder)  # no hard links on this filesystem
        safefs.unlink_at(tmp_dir, name)
        return True

    def _rename(self, name: str, final: str, folder: int) -> bool:
        """Rename over `final`: our own file, or anything in a private folder. False when
        it is another user's in a sticky folder, or a folder."""
        try:
            os.replace(name, final, src_dir_fd=self._fds["tmp"], dst_dir_fd=folder)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES, errno.EISDIR, errno.ENOTEMPTY):
                return False
            raise
        return True

    def _copy_in(self, kind: str, src_dir: int, name: str, sha256: str) -> Path:
        """Publish a verified file of ours that lies in another cache (a copy: other disk)."""
        src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
        try:
            with self.temp_file("copy") as tmp:
                out = os.open(tmp.name, safefs.NEW_FLAGS, 0o600, dir_fd=self._fds["tmp"])
                try:
                    safefs.clone_or_copy(src, out)
                    if os.fstat(out).st_size != os.fstat(src).st_size:
                        raise RegistryClientError(f"copying sha256:{sha256} fell short")
                finally:
                    os.close(out)
                return self._publish_here(kind, tmp.name, sha256, False)
        finally:
            os.close(src)

    # -- temp files -------------------------------------------------------------------------
    @contextlib.contextmanager
    def temp_file(self, hint: str = "download") -> Iterator[Path]:
        """A unique, unguessable temp path inside the cache (not yet made; open it with
        O_EXCL or O_NOFOLLOW); removed unless it was published."""
        store = self._store()
        name = f"{hint}.{os.getpid()}.{secrets.token_hex(8)}.partial"
        try:
            yield store.base / "tmp" / name
        finally:
            safefs.unlink_at(store._fds["tmp"], name)

    def work_dir(self, hint: str = "build") -> Path:
        """A new private folder beside the temp files (same filesystem, not /tmp); the
        caller removes it. Dead processes' ones go with clean_dead_temps."""
        store = self._store()
        name = f"{hint}.{os.getpid()}.{secrets.token_hex(8)}.dir"
        os.mkdir(name, 0o700, dir_fd=store._fds["tmp"])
        return store.base / "tmp" / name

    # -- small indexes, one file per user --------------------------------------------------
    def record_ref(
        self, remote_id: str, collection: str, name: str, tag: str, record: dict[str, Any]
    ) -> None:
        key = short_id(remote_id, collection, name, tag)
        data = json.dumps(record, sort_keys=True).encode()
        self._store()._write_record("refs", f"{key}.u{self.uid}.json", data)

    def resolve_ref(
        self, remote_id: str, collection: str, name: str, tag: str
    ) -> dict[str, Any] | None:
        """The newest record of this tag written by the user or a trusted user."""
        key = short_id(remote_id, collection, name, tag)
        found = []
        for cache in self._layers():
            for uid in cache._record_uids():
                found.append(cache._read_json("refs", f"{key}.u{uid}.json", uid))
            found.append(cache._legacy_ref(remote_id, collection, name, tag))
        records = [r for r in found if r is not None]
        return max(records, key=_pulled, default=None)

    def record_etag(self, sha256: str, *version: str) -> None:
        if is_sha256(sha256):
            name = f"{short_id(*version)}.u{self.uid}"
            self._store()._write_record("etags", name, sha256.encode())

    def resolve_etag(self, *version: str) -> str | None:
        key = short_id(*version)
        for cache in self._layers():
            names = [(f"{key}.u{uid}", uid) for uid in cache._record_uids()]
            names += [(key, uid) for uid in cache._record_uids()]  # before per-user names
            for name, uid in names:
                data = safefs.read_small(cache._fds["etags"], name, uid, RECORD_LIMIT)
                text = data.decode(errors="replace").strip() if data else None
                if is_sha256(text):
                    return text
        return None

    def _record_uids(self) -> list[int]:
        """Whose records we believe: our own, and (shared cache) root's and trusted users'."""
        return [self.uid, *sorted(self.trusted - {self.uid})] if self.shared else [self.uid]

    def _write_record(self, folder: str, name: str, data: bytes) -> None:
        try:
            safefs.replace_file(self._fds[folder], name, data)
        except safefs.NameTaken:
            # Someone else made a file under our own record's name: keep ours in our cache.
            if self.fallback is not None:
                self.fallback._store()._write_record(folder, name, data)
            else:
                self._notice(f"cannot record {folder}/{name}: another user's file holds it")

    def _read_json(self, folder: str, name: str, owner: int) -> dict[str, Any] | None:
        data = safefs.read_small(self._fds[folder], name, owner, RECORD_LIMIT)
        try:
            value = json.loads(data) if data else None
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def _legacy_ref(
        self, remote_id: str, collection: str, name: str, tag: str
    ) -> dict[str, Any] | None:
        """A record at refs/<remote-id>/<collection>/<name>/<tag>.json (before per-user
        records), read only through folders and from a file a trusted user owns."""
        if any("/" in p or p in ("", ".", "..") for p in (remote_id, collection, name, tag)):
            return None
        fd = self._fds["refs"]
        opened = []
        try:
            for part in (remote_id, collection, name):
                fd = os.open(part, safefs.DIR_FLAGS, dir_fd=fd)
                opened.append(fd)
                st = os.fstat(fd)
                if st.st_uid not in self.trusted or st.st_mode & safefs.OTHERS_WRITE:
                    return None
            st_file = safefs.lstat_at(fd, f"{tag}.json")
            if st_file is None or st_file.st_uid not in self.trusted:
                return None
            data = safefs.read_small(fd, f"{tag}.json", st_file.st_uid, RECORD_LIMIT)
            value = json.loads(data) if data else None
            return value if isinstance(value, dict) else None
        except (OSError, ValueError):
            return None
        finally:
            for opened_fd in opened:
                os.close(opened_fd)

    # -- locks ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, lock_id: str, on_wait: Callable[[str], None] | None = None) -> Iterator[bool]:
        """Hold the work lock of one object version; yield whether we hold it (False with
        locking off, where locks do not work, or after waiting out another user)."""
        if not self.locking:
            yield False
            return
        store = self._store()
        with locks.exclusive(
            store._fds["locks"],
            f"{lock_id}.lock",
            store._file_mode,
            on_wait,
            trusted=store.trusted if store.shared else None,
            untrusted_wait=store.untrusted_wait,
        ) as held:
            yield held

    @contextlib.contextmanager
    def using(self, sha256: str | None) -> Iterator[None]:
        """Keep `cache prune` away from an image while a pull looks it up and returns it."""
        if not (self.locking and is_sha256(sha256)):
            yield
            return
        with contextlib.ExitStack() as stack:
            for cache in self._layers():
                if cache._state == "ok":
                    stack.enter_context(
                        locks.shared(
                            cache._fds["locks"],
                            f"use-{sha256}.lock",
                            cache._file_mode,
                            max_wait=locks.USE_WAIT if cache.shared else None,
                        )
                    )
            yield

    def touch(self, path: Path) -> None:
        """Record a use for least-recently-used pruning (atime, even on noatime mounts)."""
        with contextlib.suppress(OSError, ValueError):
            folder = self._locate(path)[1]
            st = os.stat(path.name, dir_fd=folder, follow_symlinks=False)
            os.utime(path.name, (time.time(), st.st_mtime), dir_fd=folder, follow_symlinks=False)

    def _locate(self, path: Path) -> tuple[Cache, int]:
        """The cache holding an entry's path, and the descriptor of its folder."""
        for cache in self._layers():
            for folder in FOLDER.values():
                if path.parent == cache.base / folder:
                    return cache, cache._fds[folder]
        raise ValueError(f"{path} is not in the cache at {self.root}")

    # -- resumable downloads ------------------------------------------------------------------
    def resume_paths(self, version_id: str) -> tuple[Path, Path] | None:
        """The partial file and its state, reused by the next holder of the version's lock:
        both exist and are the user's own when this returns. None when someone else's files
        hold their names (a shared cache): then download to a temp_file instead."""
        store = self._store()
        names = (f"{version_id}.u{self.uid}.resume", f"{version_id}.u{self.uid}.state")
        if not all(store._own_file(n) for n in names):
            return None
        return store.base / "tmp" / names[0], store.base / "tmp" / names[1]

    def _own_file(self, name: str) -> bool:
        """Make sure tmp/<name> is a plain file of ours (made empty if missing)."""
        folder = self._fds["tmp"]
        for _ in range(2):
            st = safefs.lstat_at(folder, name)
            if st is None:
                if safefs.create_new(folder, name):
                    return True
                continue
            if stat.S_ISREG(st.st_mode) and st.st_uid == self.uid and st.st_nlink == 1:
                return True
            try:
                safefs.remove_tree_at(folder, name)  # anything else under our name goes
            except OSError:
                return False
        return False

    def read_state(self, path: Path) -> dict[str, Any]:
        data = safefs.read_small(self._tmp_fd(path), path.name, self.uid, STATE_LIMIT)
        try:
            value = json.loads(data) if data else {}
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def write_state(self, path: Path, state: dict[str, Any]) -> None:
        safefs.replace_file(self._tmp_fd(path), path.name, json.dumps(state).encode(), 0o600)

    # Resume files, reached through the tmp/ descriptor like everything else in the cache.
    def empty_temp(self, path: Path) -> None:
        """Truncate a resume file of ours to nothing (never through a symlink)."""
        fd = os.open(path.name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._tmp_fd(path))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != self.uid or st.st_nlink != 1:
                raise PermissionError(errno.EPERM, "not a plain file of yours", str(path))
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    def remove_temp(self, path: Path) -> None:
        safefs.unlink_at(self._tmp_fd(path), path.name)

    def has_temp(self, path: Path) -> bool:
        return safefs.lstat_at(self._tmp_fd(path), path.name) is not None

    def _tmp_fd(self, path: Path) -> int:
        for cache in (self, self.fallback):
            if cache is not None and cache._state == "ok" and path.parent == cache.base / "tmp":
                return cache._fds["tmp"]
        raise ValueError(f"{path} is not a temp file of the cache at {self.root}")

    def clean_dead_temps(self) -> int:
        """Remove temp files and build folders whose writer died (the pid is in the name)."""
        store = self._store()
        folder = store._fds["tmp"]
        removed = 0
        for name in os.listdir(folder):
            parts = name.split(".")  # download.<pid>.<rand>.partial, build.<pid>.<rand>.dir
            if parts[-1] not in ("partial", "dir") or len(parts) < 4 or not parts[-3].isdigit():
                continue
            st = safefs.lstat_at(folder, name)
            if st is None or not store._own(st.st_uid) or locks.pid_alive(int(parts[-3])):
                continue
            safefs.remove_tree_at(folder, name, ignore_errors=True)
            removed += 1
        return removed

    def remove_stale_resumes(self, older_than: float) -> int:
        """Resumable downloads untouched since `older_than` (a time) whose lock is free."""
        store = self._store()
        folder = store._fds["tmp"]
        removed = 0
        for name in os.listdir(folder):
            if not name.endswith(".resume"):
                continue
            version = name.removesuffix(".resume")
            version = version.rpartition(".u")[0] or version  # <version>.u<uid>.resume
            st = safefs.lstat_at(folder, name)
            if st is None or not store._own(st.st_uid) or st.st_mtime > older_than:
                continue
            with locks.try_exclusive(store._fds["locks"], f"{version}.lock") as free:
                if free:
                    safefs.unlink_at(folder, name)
                    safefs.unlink_at(folder, name.removesuffix(".resume") + ".state")
                    removed += 1
        return removed

    # -- listing and maintenance --------------------------------------------------------------
    def entries(self, kind: str = "sif") -> list[CacheEntry]:
        """Published images (kind "sif") or docker layer blobs (kind "blobs"), of every
        owner, in this cache and its fallback."""
        found = []
        for cache in self._layers():
            folder = cache._fds[FOLDER[kind]]
            for name in sorted(os.listdir(folder)):
                sha = _entry_sha(kind, name)
                st = safefs.lstat_at(folder, name) if sha else None
                if sha and st is not None and stat.S_ISREG(st.st_mode):
                    found.append(cache._entry(kind, sha, name, st))
        return found

    def refs(self) -> Iterator[dict[str, Any]]:
        """Tag records we believe (our own and trusted users'), for `cache ls`."""
        for cache in self._layers():
            folder = cache._fds["refs"]
            uids = set(cache._record_uids())
            for name in sorted(os.listdir(folder)):
                owner = _record_owner(name)
                if owner in uids and (record := cache._read_json("refs", name, owner)):
                    yield record
            yield from cache._legacy_refs()

    def _legacy_refs(self) -> Iterator[dict[str, Any]]:
        """Records at refs/<remote-id>/<collection>/<name>/<tag>.json (before per-user ones)."""
        for where, _dirs, files, fd in os.fwalk(".", dir_fd=self._fds["refs"]):
            st = os.fstat(fd)
            if where.count("/") != 3 or st.st_uid not in self.trusted:
                continue
            if st.st_mode & safefs.OTHERS_WRITE:
                continue
            for name in files:
                file_st = safefs.lstat_at(fd, name)
                if not name.endswith(".json") or not file_st or file_st.st_uid not in self.trusted:
                    continue
                data = safefs.read_small(fd, name, file_st.st_uid, RECORD_LIMIT)
                with contextlib.suppress(ValueError):
                    value = json.loads(data) if data else None
                    if isinstance(value, dict):
                        yield value

    def may_remove(self, entry: CacheEntry) -> bool:
        """Whether this user may remove the entry (in a shared cache: their own, or root)."""
        return self._locate(entry.path)[0]._own(entry.owner)

    def remove(self, entry: CacheEntry, *, dry_run: bool = False) -> bool:
        """Remove an entry unless a running pull is handing it out (its use lock is held);
        whether it went (with dry_run: whether it would)."""
        layer, folder = self._locate(entry.path)
        with locks.try_exclusive(
            layer._fds["locks"], f"use-{entry.sha256}.lock", layer._file_mode
        ) as free:
            if not free or dry_run:
                return free
            try:
                safefs.unlink_at(folder, entry.path.name)
            except PermissionError:
                return False
            return True

    def quarantine(self, entry: CacheEntry) -> Path | None:
        """Move a damaged entry out of use, into quarantine/; None when we may not."""
        layer, folder = self._locate(entry.path)
        dest = f"{entry.path.name}.{int(time.time())}.{secrets.token_hex(4)}"
        try:
            os.rename(entry.path.name, dest, src_dir_fd=folder, dst_dir_fd=layer._fds["quarantine"])
        except OSError:
            return None
        return layer.base / "quarantine" / dest

    def clean(self) -> int:
        """Remove every entry, record, temp file and lock we may (in a shared cache: our
        own; root: all); the folders stay. Returns the bytes of images freed."""
        freed = 0
        for cache in self._layers():
            if cache._state != "ok":
                continue
            freed += sum(e.size for e in cache.entries_here("sif") if cache._own(e.owner))
            for folder in TREE:
                fd = cache._fds[folder]
                for name in os.listdir(fd):
                    st = safefs.lstat_at(fd, name)
                    is_tree = folder in ("sif", "blobs") and name == "sha256"
                    if st is not None and not is_tree and cache._own(st.st_uid):
                        safefs.remove_tree_at(fd, name, ignore_errors=True)
        return freed

    def entries_here(self, kind: str) -> list[CacheEntry]:
        """Entries of this cache alone (not its fallback)."""
        return [e for e in self.entries(kind) if e.path.parent == self.base / FOLDER[kind]]


def _sha256_of(fd: int) -> str:
    digest = hashlib.sha256()
    pos = 0
    while data := os.pread(fd, 4 << 20, pos):
        digest.update(data)
        pos += len(data)
    return digest.hexdigest()


def _entry_sha(kind: str, name: str) -> str | None:
    """`<hex>.sif`, `<hex>.u<uid>.sif` (kind sif), `<hex>`, `<hex>.u<uid>` (blobs)."""
    if kind == "sif":
        if not name.endswith(".sif"):
            return None
        name = name.removesuffix(".sif")
    sha, _, owner = name.partition(".u")
    if owner and not owner.isdigit():
        return None
    return sha if is_sha256(sha) else None


def _record_owner(name: str) -> int | None:
    owner = name.removesuffix(".json").rpartition(".u")[2]
    return int(owner) if owner.isdigit() else None


def _pulled(record: dict[str, Any]) -> float:
    value = record.get("pulled")
    return float(value) if isinstance(value, int | float) else 0.0


def _close_all(fds: dict[str, int]) -> None:
    for fd in fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


def raise_for_os_error(exc: OSError, what: str) -> RegistryClientError:
    """Map disk-full and permission errors to clear, coded errors."""
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return AuthError(f"{what}: permission denied ({exc.strerror})")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return RegistryClientError(
            f"{what}: no space left on device",
            hint="free space or use --cache-dir on a larger disk",
        )
    return RegistryClientError(f"{what}: {exc.strerror or exc}")
