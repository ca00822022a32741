"""Configuration: a TOML file of named remotes and a default remote.

    default_remote = "lab"

    [remotes.lab]
    type = "s3"                 # s3 | swift | azure | gcs | file
    bucket = "images"           # s3/gcs bucket, swift/azure container; `path` for file
    prefix = ""                 # optional key prefix
    endpoint_url = "http://127.0.0.1:9000"
    region = "us-east-1"
    profile = "lab"             # AWS profile; or access_key_id + secret_access_key

With no file at all, the default remote is `local`: a directory laid out like a bucket
under the user's data directory. A file that holds a secret must be mode 0600 (or
stricter) or it is refused. Secrets are never printed: RemoteConfig.public() hides them.

Two files, read in this order, the later winning (docs/config.md):

1. the site file, `/etc/registry-client/config.toml` ($REGISTRY_CLIENT_SITE_CONFIG): what
   an admin sets once for every user of a node (remotes, cache location and policy). It
   is trusted, so it must belong to root (or to the user reading it) and be writable by
   nobody else, its folder too;
2. the user's file (--config, $REGISTRY_CLIENT_CONFIG, $XDG_CONFIG_HOME/...).

Both get the same checks (keys, types, 0600 when holding a secret). A remote the user
defines replaces the site's remote of that name as a whole; other settings merge key by
key within their table. Environment variables and command-line options come on top.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry_client.backends import OPTIONS as REMOTE_OPTIONS
from registry_client.cache import UNTRUSTED_WAIT, Cache
from registry_client.errors import ConfigError, NotFound
from registry_client.names import check_segment
from registry_client.schema import (
    BOOLEAN,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    PROXY_LIST,
    STRING,
    Kind,
    Schema,
    between,
    check_table,
)

APP = "registry-client"
ENV_CONFIG = "REGISTRY_CLIENT_CONFIG"
ENV_SITE_CONFIG = "REGISTRY_CLIENT_SITE_CONFIG"
SITE_CONFIG = Path("/etc/registry-client/config.toml")
ENV_CACHE = "REGISTRY_CLIENT_CACHE_DIR"
ENV_CACHE_LOCKING = "REGISTRY_CLIENT_CACHE_LOCKING"
ENV_DEFAULT_REMOTE = "REGISTRY_CLIENT_DEFAULT_REMOTE"
ENV_LOCAL_DIR = "REGISTRY_CLIENT_LOCAL_DIR"
REMOTE_TYPES = tuple(REMOTE_OPTIONS)
SECRET_KEYS = frozenset(
    {
        "secret_access_key",
        "session_token",
        "key",
        "password",
        "token",
        "auth_token",
        "application_credential_secret",
        "account_key",  # Azure
        "sas_token",  # Azure
        "connection_string",  # Azure (holds the account key or a SAS)
        "temp_url_key",  # Swift TempURLs (docs/fleet.md)
    }
)
LOCAL_REMOTE = "local"


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value and os.path.isabs(value) else Path.home() / fallback


def default_config_path() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config") / APP / "config.toml"


def default_cache_dir() -> Path:
    return _xdg("XDG_CACHE_HOME", ".cache") / APP


def default_local_dir() -> Path:
    env = os.environ.get(ENV_LOCAL_DIR)
    return Path(env) if env else _xdg("XDG_DATA_HOME", ".local/share") / APP / "images"


@dataclass(frozen=True)
class RemoteConfig:
    name: str
    type: str
    options: dict[str, Any] = field(default_factory=dict)
    #: the file that defines it; "" for built-in and direct-URL remotes
    source: str = field(default="", compare=False)

    @property
    def location(self) -> str:
        """bucket / container / directory."""
        key = "path" if self.type == "file" else "bucket"
        return str(self.options.get(key) or self.options.get("container") or "")

    @property
    def prefix(self) -> str:
        prefix = str(self.options.get("prefix", "")).strip("/")
        return f"{prefix}/" if prefix else ""

    def public(self) -> dict[str, Any]:
        """Options safe to show: secrets replaced by '***'."""
        shown = {k: ("***" if k in SECRET_KEYS else v) for k, v in self.options.items()}
        return {"name": self.name, "type": self.type, **shown}

    def __repr__(self) -> str:  # keep secrets out of tracebacks and logs
        return f"RemoteConfig(name={self.name!r}, type={self.type!r}, location={self.location!r})"


@dataclass
class Config:
    path: Path  # the user's file: the one `remote add|rm` writes
    remotes: dict[str, RemoteConfig]
    default_remote: str
    settings: dict[str, Any] = field(default_factory=dict)
    site_path: Path | None = None  # the site file, when one was read

    def remote(self, name: str | None) -> RemoteConfig:
        name = name or self.default_remote
        if name in self.remotes:
            return self.remotes[name]
        if name == LOCAL_REMOTE:
            return local_remote()
        where = f"{self.path} or {self.site_path}" if self.site_path else str(self.path)
        raise NotFound(
            f"no remote named {name!r} in {where}",
            hint="see `registry-client remote ls`; add one with `registry-client remote add`",
        )


def local_remote() -> RemoteConfig:
    return RemoteConfig(LOCAL_REMOTE, "file", {"path": str(default_local_dir())})


def _check_mode(path: Path, remotes: dict[str, Any]) -> None:
    has_secret = any(isinstance(v, dict) and SECRET_KEYS & v.keys() for v in remotes.values())
    if has_secret and stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise ConfigError(
            f"{path} holds a secret but is readable by others",
            hint=f"run: chmod 600 {path}",
        )


def remote_from_table(name: str, table: Any, path: Path | str) -> RemoteConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [remotes.{name}] must be a table")
    try:
        check_segment(name, "remote name")
    except Exception as exc:
        raise ConfigError(f"{path}: {exc}") from None
    kind = table.get("type")
    if kind not in REMOTE_TYPES:
        raise ConfigError(f"{path}: remote {name!r} needs type = one of {', '.join(REMOTE_TYPES)}")
    check_table(table, REMOTE_OPTIONS[kind], f"[remotes.{name}] ({kind} remote)", path)
    options = {k: v for k, v in table.items() if k != "type"}
    if kind == "file" and not options.get("path"):
        raise ConfigError(f"{path}: file remote {name!r} needs path")
    if kind != "file" and not (options.get("bucket") or options.get("container")):
        raise ConfigError(f"{path}: {kind} remote {name!r} needs bucket")
    for key in URL_KEYS:
        if isinstance(options.get(key), str):
            check_url(options[key], f"{path}: [remotes.{name}] {key}")
    return RemoteConfig(name, kind, options, str(path))


#: Remote options that are endpoints: a value without a scheme is a mistake, not a host.
URL_KEYS = ("endpoint_url", "auth_url", "storage_url")


def check_url(value: str, what: str) -> str:
    """`value` if it is an http(s) URL; else ConfigError (exit 2) naming `what`. botocore
    says only "ValueError" about `s3.example.org`, swiftclient tries it as a path."""
    if not value.startswith(("http://", "https://")):
        raise ConfigError(
            f"{what} {value[:200]!r}: expected a URL starting with http:// or https://",
            hint=f"e.g. https://{value[:200]}",
        )
    return value


def user_config_path(path: str | os.PathLike[str] | None = None) -> tuple[Path, bool]:
    """The user's config file, and whether it was asked for explicitly."""
    explicit = path or os.environ.get(ENV_CONFIG)
    return (Path(explicit), True) if explicit else (default_config_path(), False)


def site_config_path() -> tuple[Path, bool]:
    """The site file, and whether it was asked for explicitly."""
    explicit = os.environ.get(ENV_SITE_CONFIG)
    return (Path(explicit), True) if explicit else (SITE_CONFIG, False)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """The site file (if any) overlaid with the user's file (if any); a missing default
    file means its defaults, a missing file that was named is an error."""
    site_path, site_named = site_config_path()
    site = read_config_file(site_path, site_named, site=True)
    cfg_path, named = user_config_path(path)
    data = read_config_file(cfg_path, named)
    remotes: dict[str, RemoteConfig] = {}
    for source, layer in ((site_path, site), (cfg_path, data)):
        for name, table in (layer or {}).get("remotes", {}).items():
            remotes[name] = remote_from_table(name, table, source)
    merged = _merge(site or {}, data or {})
    default = os.environ.get(ENV_DEFAULT_REMOTE) or merged.get("default_remote") or LOCAL_REMOTE
    settings = {k: v for k, v in merged.items() if k not in ("remotes", "default_remote")}
    return Config(cfg_path, remotes, default, settings, site_path if site is not None else None)


def _merge(site: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """Top-level keys: the user's win; tables other than [remotes]: merged key by key."""
    merged = dict(site)
    for key, value in user.items():
        below = merged.get(key)
        if key != "remotes" and isinstance(value, dict) and isinstance(below, dict):
            merged[key] = {**below, **value}
        else:
            merged[key] = value
    return merged


def read_config_file(path: Path, named: bool, *, site: bool = False) -> dict[str, Any] | None:
    """One config file, parsed and checked (keys, types, modes); None if it does not exist
    and was not named. The site file must also be trusted: see check_site_file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        if named:
            what = "site config" if site else "config file"
            raise ConfigError(f"{what} {path} does not exist") from None
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        if site:
            check_site_file(path, os.fstat(fd))
        # Imported here: the parser costs ~2 ms, and most nodes have no config file.
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - exercised on 3.10 only
            import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
        try:
            data: dict[str, Any] = tomllib.loads(fh.read().decode("utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
    check_document(path, data)
    if data.get("remotes"):
        _check_mode(path, data["remotes"])
    return data


def check_site_file(path: Path, st: os.stat_result) -> None:
    """The site file steers every user of the node (where images come from, where the
    cache lives): only root, or the user reading it, may own or change it and its folder."""
    folder = Path(os.path.realpath(path)).parent
    for what, info in ((str(path), st), (str(folder), os.stat(folder))):
        if info.st_uid not in (0, os.geteuid()):
            raise ConfigError(
                f"refusing the site config {path}: {what} belongs to uid {info.st_uid}, not root",
                hint=f"run as root: chown root {what}",
            )
        if info.st_mode & 0o002 or (info.st_mode & 0o020 and info.st_gid != 0):
            raise ConfigError(
                f"refusing the site config {path}: {what} is writable by other users",
                hint=f"run as root: chmod go-w {what}",
            )


#: [fleet]: the site's cache proxies and how the nodes use them (registry_client.fleet,
#: docs/fleet.md); a remote's own `cache_proxies` wins over this list.
FLEET_SCHEMA: Schema = {
    "cache_proxies": PROXY_LIST,
    "sign_window": between(60, 302_400, integer=True),  # seconds; twice it: S3's 7-day cap
    "connect_timeout": between(0.1, 600),
    "read_timeout": between(1, 3600),
    "fallback_spread": between(0, 3600),
    "fallback_concurrency": between(1, 64, integer=True),
}

#: Every key and table of the config file but [remotes.NAME], whose keys depend on the
#: remote's type (registry_client.backends.OPTIONS). Anything else is a typo to report,
#: not to ignore: a misspelt `default_remote` would silently push to the local remote.
SCHEMA: Schema = {
    "default_remote": STRING,
    # each [remotes.NAME] is checked against its type's keys by remote_from_table
    "remotes": Kind("a table of [remotes.NAME] tables", lambda v: isinstance(v, dict)),
    "cache_dir": STRING,
    "cache": {
        "shared": BOOLEAN,
        "locking": BOOLEAN,
        "max_size": Kind(
            'a size such as "200G" or "500M", or a number of bytes', lambda v: _is_size(v)
        ),
        "stale_if_error": BOOLEAN,
        "trusted_users": Kind(
            "a list of user names or uids",
            lambda v: isinstance(v, list) and all(isinstance(u, str | int) for u in v),
        ),
        "untrusted_wait": Kind(  # seconds
            "a number of seconds from 0 to 86400",
            lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 86400,
            float,
        ),
    },
    "transfer": {
        "chunk_size": POSITIVE_INT,  # bytes
        "concurrency": POSITIVE_INT,
        "part_size": POSITIVE_INT,  # bytes
        "push_concurrency": POSITIVE_INT,
        "stall_timeout": POSITIVE_NUMBER,  # seconds a read may deliver nothing
    },
    "library": {"url": STRING, "token": STRING},
    "shub": {"url": STRING, "username": STRING, "token": STRING},
    "fleet": FLEET_SCHEMA,
}


def _is_size(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value > 0
    if not isinstance(value, str):
        return False
    from registry_client.units import parse_size

    try:
        return parse_size(value) > 0
    except ValueError:
        return False


def check_document(cfg_path: Path, data: dict[str, Any]) -> None:
    """Every key and value of one parsed config file (the remotes are checked as they
    are built, by remote_from_table); ConfigError (exit 2) with a suggestion otherwise."""
    check_table(data, SCHEMA, "", cfg_path)


def _expand(value: str | None) -> str | None:
    """The config's `cache_dir` with $USER-style variables expanded: a site file names one
    node-local folder per user (`/local/scratch/$USER/registry-client`). An unset variable
    is an error, not a folder named after it."""
    if value is None or "$" not in value:
        return value
    expanded = os.path.expandvars(value)
    if "$" in expanded:
        raise ConfigError(
            f"cache_dir {value!r}: a variable in it is not set",
            hint="use variables every job has, such as $USER or $HOME",
        )
    return expanded


def node_cache(config: Config, cache_dir: str | None = None) -> Cache:
    """The node cache: at --cache-dir (given here), $REGISTRY_CLIENT_CACHE_DIR, the config's
    `cache_dir` or the default. `[cache] shared` makes it one cache for a group's users
    (docs/security.md): `trusted_users` names whose files count as verified besides the
    user's and root's, `untrusted_wait` how long to wait for another user's download;
    the user's private cache (the default) takes what a shared one cannot hold for them."""
    root = cache_dir or os.environ.get(ENV_CACHE) or _expand(config.settings.get("cache_dir"))
    table = config.settings.get("cache")
    options: dict[str, Any] = table if isinstance(table, dict) else {}
    path = Path(root).expanduser() if root else default_cache_dir()
    locking = _locking_enabled(options)
    trusted = _trusted_users(config.path, options.get("trusted_users", []))
    if not options.get("shared", False):
        return Cache(path, locking=locking, trusted_users=trusted)
    private = default_cache_dir()
    return Cache(
        path,
        shared=True,
        locking=locking,
        trusted_users=trusted,
        untrusted_wait=float(options.get("untrusted_wait", UNTRUSTED_WAIT)),
        fallback=(
            Cache(private, locking=locking, trusted_users=trusted)
            if private.absolute() != path.absolute()
            else None
        ),
    )


def _trusted_users(cfg_path: Path, users: list[str | int]) -> tuple[int, ...]:
    """[cache] trusted_users: user names (looked up now) or uids."""
    import pwd

    uids = []
    for user in users:
        try:
            uid = pwd.getpwnam(user).pw_uid if isinstance(user, str) else user
        except KeyError:
            raise ConfigError(f"{cfg_path}: [cache] trusted_users: no user {user!r}") from None
        if isinstance(uid, bool) or not 0 <= uid < 2**32:
            raise ConfigError(f"{cfg_path}: [cache] trusted_users: {user!r} is not a user")
        uids.append(uid)
    return tuple(uids)


def _locking_enabled(cache_options: dict[str, Any]) -> bool:
    env = os.environ.get(ENV_CACHE_LOCKING)
    if env is not None:
        return env.lower() not in ("0", "false", "no", "off")
    return cache_options.get("locking", True) is True


def save_config(config: Config) -> None:
    """Write the user's config from `config` (its remotes of that file and its settings),
    atomically, mode 0600 (see write_config_text)."""
    import tomlkit

    data: dict[str, Any] = dict(config.settings)
    data["default_remote"] = config.default_remote
    data["remotes"] = {
        n: {"type": r.type, **r.options}
        for n, r in config.remotes.items()
        if r.source in ("", str(config.path))
    }
    write_config_text(config.path, tomlkit.dumps(data))


def write_config_text(path: Path, text: str) -> None:
    """Write a config file atomically, mode 0600: it may hold secrets.

    The temp file is created O_EXCL | O_NOFOLLOW under a random name, relative to the
    opened folder, and renamed over the config: a name planted in advance (a symlink to
    another user's file) is never written through. A config that is a symlink, or
    belongs to someone else, or sits in a folder others may write to, is refused: the
    secret would land where another user controls it.
    """
    folder, name = path.parent, path.name
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _check_writable_target(path, dir_fd)
        tmp = f".{name}.{secrets.token_hex(8)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(text.encode())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.fsync(dir_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
    finally:
        os.close(dir_fd)


def _check_writable_target(path: Path, dir_fd: int) -> None:
    me = os.geteuid()
    folder = os.fstat(dir_fd)
    if folder.st_uid not in (me, 0) or (
        folder.st_mode & 0o022 and not folder.st_mode & stat.S_ISVTX
    ):
        raise ConfigError(
            f"refusing to write {path}: its folder may be changed by other users",
            hint="keep the config in a folder only you can write (e.g. mode 0700)",
        )
    try:
        st = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        raise ConfigError(
            f"refusing to write {path}: it is a symlink or not a regular file",
            hint="point --config (or REGISTRY_CLIENT_CONFIG) at the real file",
        )
    if st.st_uid != me:
        raise ConfigError(
            f"refusing to write {path}: it belongs to another user (uid {st.st_uid})",
            hint="use a config file of your own with --config",
        )
