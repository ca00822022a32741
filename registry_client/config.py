"""Configuration: a TOML file of named remotes and a default remote.

    default_remote = "lab"

    [remotes.lab]
    type = "s3"                 # s3 | swift | file
    bucket = "images"           # s3 bucket / swift container; `path` for file
    prefix = ""                 # optional key prefix
    endpoint_url = "http://127.0.0.1:9000"
    region = "us-east-1"
    profile = "lab"             # AWS profile; or access_key_id + secret_access_key

With no file at all, the default remote is `local`: a directory laid out like a bucket
under the user's data directory. A file that holds a secret must be mode 0600 (or
stricter) or it is refused. Secrets are never printed: RemoteConfig.public() hides them.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry_client.cache import Cache
from registry_client.errors import ConfigError, NotFound
from registry_client.names import check_segment

APP = "registry-client"
ENV_CONFIG = "REGISTRY_CLIENT_CONFIG"
ENV_CACHE = "REGISTRY_CLIENT_CACHE_DIR"
ENV_CACHE_LOCKING = "REGISTRY_CLIENT_CACHE_LOCKING"
ENV_DEFAULT_REMOTE = "REGISTRY_CLIENT_DEFAULT_REMOTE"
ENV_LOCAL_DIR = "REGISTRY_CLIENT_LOCAL_DIR"
REMOTE_TYPES = ("s3", "swift", "file")
SECRET_KEYS = frozenset(
    {
        "secret_access_key",
        "session_token",
        "key",
        "password",
        "token",
        "auth_token",
        "application_credential_secret",
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
    path: Path
    remotes: dict[str, RemoteConfig]
    default_remote: str
    settings: dict[str, Any] = field(default_factory=dict)

    def remote(self, name: str | None) -> RemoteConfig:
        name = name or self.default_remote
        if name in self.remotes:
            return self.remotes[name]
        if name == LOCAL_REMOTE:
            return local_remote()
        raise NotFound(
            f"no remote named {name!r} in {self.path}",
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


def remote_from_table(name: str, table: Any, path: Path) -> RemoteConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [remotes.{name}] must be a table")
    try:
        check_segment(name, "remote name")
    except Exception as exc:
        raise ConfigError(f"{path}: {exc}") from None
    kind = table.get("type")
    if kind not in REMOTE_TYPES:
        raise ConfigError(f"{path}: remote {name!r} needs type = one of {', '.join(REMOTE_TYPES)}")
    options = {k: v for k, v in table.items() if k != "type"}
    if kind == "file" and not options.get("path"):
        raise ConfigError(f"{path}: file remote {name!r} needs path")
    if kind in ("s3", "swift") and not (options.get("bucket") or options.get("container")):
        raise ConfigError(f"{path}: {kind} remote {name!r} needs bucket")
    return RemoteConfig(name, kind, options)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the config; a missing default file means the zero-config defaults."""
    explicit = path or os.environ.get(ENV_CONFIG)
    cfg_path = Path(explicit) if explicit else default_config_path()
    data: dict[str, Any] = {}
    if cfg_path.exists():
        # Imported here: the parser costs ~2 ms, and most nodes have no config file.
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - exercised on 3.10 only
            import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
        try:
            data = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {cfg_path}: {exc}") from None
    elif explicit:
        raise ConfigError(f"config file {cfg_path} does not exist")
    _check_keys(cfg_path, data)
    remotes_table = data.get("remotes", {})
    if not isinstance(remotes_table, dict):
        raise ConfigError(f"{cfg_path}: [remotes] must be a table")
    if remotes_table:
        _check_mode(cfg_path, remotes_table)
    remotes = {n: remote_from_table(n, t, cfg_path) for n, t in remotes_table.items()}
    default = os.environ.get(ENV_DEFAULT_REMOTE) or data.get("default_remote") or LOCAL_REMOTE
    if not isinstance(default, str):
        raise ConfigError(f"{cfg_path}: default_remote must be a string")
    settings = {k: v for k, v in data.items() if k not in ("remotes", "default_remote")}
    return Config(cfg_path, remotes, default, settings)


#: Top-level keys and tables of the config file; anything else is a typo to report, not to
#: ignore (a misspelt `default_remote` would silently send pushes to the local remote).
KNOWN_KEYS = ("default_remote", "remotes", "cache_dir", "cache", "transfer", "library", "shub")


def _check_keys(cfg_path: Path, data: dict[str, Any]) -> None:
    unknown = sorted(k for k in data if k not in KNOWN_KEYS)
    if not unknown:
        return
    import difflib

    close = difflib.get_close_matches(unknown[0], KNOWN_KEYS, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(KNOWN_KEYS)}"
    raise ConfigError(f"{cfg_path}: unknown key {unknown[0]!r}", hint=hint)


def node_cache(config: Config, cache_dir: str | None = None) -> Cache:
    """The node cache: at --cache-dir (given here), $REGISTRY_CLIENT_CACHE_DIR, the config's
    `cache_dir` or the default; `[cache] shared` and `locking` set how it is shared."""
    root = cache_dir or os.environ.get(ENV_CACHE) or config.settings.get("cache_dir")
    table = config.settings.get("cache")
    options: dict[str, Any] = table if isinstance(table, dict) else {}
    return Cache(
        Path(root).expanduser() if root else default_cache_dir(),
        shared=bool(options.get("shared", False)),
        locking=_locking_enabled(options),
    )


def _locking_enabled(cache_options: dict[str, Any]) -> bool:
    env = os.environ.get(ENV_CACHE_LOCKING)
    if env is not None:
        return env.lower() not in ("0", "false", "no", "off")
    return bool(cache_options.get("locking", True))


def check_transfer(table: Any) -> None:
    """[transfer] holds positive integers (bytes or counts): checked by every command that
    opens the cache, cache hits included, so a bad value fails the same way everywhere."""
    if table is not None and (
        not isinstance(table, dict)
        or not all(
            isinstance(table.get(k, 1), int) and table.get(k, 1) > 0
            for k in ("chunk_size", "concurrency", "part_size", "push_concurrency")
        )
    ):
        raise ConfigError("[transfer] values must be positive integers (bytes or counts)")


def save_config(config: Config) -> None:
    """Write atomically with mode 0600: the file may hold secrets."""
    import tomli_w

    data: dict[str, Any] = dict(config.settings)
    data["default_remote"] = config.default_remote
    data["remotes"] = {n: {"type": r.type, **r.options} for n, r in config.remotes.items()}
    config.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = config.path.with_name(f".{config.path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(tomli_w.dumps(data).encode())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, config.path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
