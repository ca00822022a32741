"""The console script: cache hits are answered before the full CLI loads.

Batch jobs start by the thousand with `registry-client pull REF`, `REF@sha256:HEX` or
`pull --offline REF` for images their node already holds. Such a hit needs at most one
HEAD, yet importing typer and the command modules, or botocore with its S3 service model,
costs more than the hit itself (docs/performance.md). So `main` first tries to answer
those pulls with the cache modules and, where the store must confirm the tag, one HEAD
asked with the standard library (backends.light), through the functions the full CLI
calls for them too (config.load_config, config.node_cache, remotes.remote_for/remote_id,
hits.pull_from_cache, hits.light_hit), and prints what the full CLI would print.

Everything else goes to the full CLI (registry_client.cli), which starts from scratch:
other commands and options (-o, --force, -v, help ...), fetcher references (docker://
...), a cache miss, and any error at all, so messages and exit codes are the CLI's own.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from registry_client.hits import PullResult

# Global options (before the command) a hit can ignore: they only steer stderr (progress
# bars, status lines), and a hit writes nothing there.
_STDERR_FLAGS = frozenset({"-q", "--quiet", "--progress", "--no-progress"})
_GLOBAL_VALUES = ("--config", "--cache-dir")
_PULL_FLAGS = frozenset({"--offline", "--json"})
_COMPLETE_VAR = "_REGISTRY_CLIENT_COMPLETE"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        code = _fast_pull(args)
        if code is not None:
            return code
        # Loading the full CLI takes a while on a busy node: Ctrl-C then is no traceback.
        from registry_client.cli import main as cli_main
    except KeyboardInterrupt:  # as the full CLI reports it
        from registry_client.console import print_error
        from registry_client.errors import Interrupted

        print_error(Interrupted("interrupted"))
        return 130
    return cli_main(argv)


class FastPull(NamedTuple):
    """A `pull` the fast path may answer, as the command line asked for it."""

    ref: str
    offline: bool = False
    as_json: bool = False
    config: str | None = None
    cache_dir: str | None = None


def parse_fast_pull(args: list[str]) -> FastPull | None:
    """`[--config C] [--cache-dir D] [-q] [--json] [--[no-]progress] pull [--offline]
    [--json] REF` (options after `pull` in any order, `--opt=value` too); else None."""
    values: dict[str, str] = {}
    as_json = False
    i = 0
    while i < len(args) and args[i] != "pull":
        name, eq, value = args[i].partition("=")
        if name in _GLOBAL_VALUES:
            if not eq:
                i += 1
                value = args[i] if i < len(args) else ""
            if not value or value.startswith("-"):
                return None  # missing, or odd enough to leave to click
            values[name] = value  # the last one wins, as in click
        elif args[i] == "--json":
            as_json = True
        elif args[i] not in _STDERR_FLAGS:
            return None
        i += 1
    rest = args[i + 1 :]
    refs = [a for a in rest if not a.startswith("-")]
    flags = {a for a in rest if a.startswith("-")}
    if i == len(args) or len(refs) != 1 or not flags <= _PULL_FLAGS:
        return None
    return FastPull(
        refs[0],
        "--offline" in flags,
        as_json or "--json" in flags,
        values.get("--config"),
        values.get("--cache-dir"),
    )


def _fast_pull(args: list[str]) -> int | None:
    """The exit code of an answered pull, or None to run the full CLI."""
    if _COMPLETE_VAR in os.environ:  # shell completion: click answers, whatever argv says
        return None
    from registry_client.argv import hoist_globals

    request = parse_fast_pull(hoist_globals(args))
    if request is None:
        return None
    result = _cached(request)
    if result is None:
        return None
    try:
        from registry_client.console import write_result

        write_result(result.to_dict(), result.path, as_json=request.as_json)
    except BrokenPipeError:
        return 1  # as the full CLI
    return 0


def _cached(request: FastPull) -> PullResult | None:
    """The full CLI's steps for this pull, up to a cache hit; None if it is not one."""
    try:
        # Imported here, not at the top: other commands go to the full CLI without them.
        from registry_client.context import open_context
        from registry_client.hits import light_hit, pull_from_cache
        from registry_client.names import ImageRef, parse_reference
        from registry_client.remotes import remote_for, remote_id

        ref = parse_reference(request.ref)
        if not isinstance(ref, ImageRef):
            return None
        # The full CLI's composition root, then service.pull's first steps, so that
        # whatever the full CLI would refuse is refused before the hit touches the cache.
        ctx = open_context(request.config, request.cache_dir)
        remote = remote_for(ctx.config, ref)
        rid = remote_id(remote)
        result = pull_from_cache(ctx.cache, ref, rid, request.offline)
        if result is None and not request.offline:
            result = light_hit(ctx.cache, ref, remote, rid)
        fallback = ctx.cache.fallback
        if ctx.cache.notices or (fallback and fallback.notices):
            return None  # the cache has something to say: the full CLI prints it on stderr
        return result
    except Exception:  # noqa: BLE001 - the full CLI runs again and reports it its own way
        return None
