"""Global options anywhere on the command line: `registry-client pull REF --json -q`.

Admins write options where they think of them, often after the subcommand. The full CLI
(click) accepts global options only before it, so `hoist_globals` moves them there first;
the console script's fast path uses the same function, so a cache hit is answered for
every spelling the full CLI accepts. Light on purpose: the fast path imports it.
"""

from __future__ import annotations

#: Global options that take a value (`--config C` or `--config=C`).
VALUE_OPTIONS = ("--config", "--cache-dir", "--log-file")
#: Global flags.
FLAGS = frozenset(
    {"-q", "--quiet", "-v", "-vv", "-vvv", "--verbose", "--json", "--progress", "--no-progress"}
)


def hoist_globals(args: list[str]) -> list[str]:
    """`args` with the global options found after the (sub)command moved before it.

    Everything after `--` stays where it is. The order of the options among themselves
    is kept, so the last of two `--config` still wins, as in click.
    """
    command = _command_index(args)
    if command is None:
        return list(args)
    front, rest, moved = list(args[:command]), [], []
    i = command
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        name = arg.partition("=")[0]
        if arg in FLAGS:
            moved.append(arg)
        elif arg in VALUE_OPTIONS and i + 1 < len(args):
            moved.extend(args[i : i + 2])
            i += 1
        elif name in VALUE_OPTIONS and "=" in arg:
            moved.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + moved + rest


def _command_index(args: list[str]) -> int | None:
    """Where the first subcommand is: the first word that is no option nor an option's value."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return None
        if arg in VALUE_OPTIONS:
            i += 2
            continue
        if not arg.startswith("-"):
            return i
        i += 1
    return None
