"""registry-client(1), generated from the command line itself, so it never drifts:
`registry-client --man-page > /usr/local/share/man/man1/registry-client.1`.

Written by hand (~60 lines of roff) rather than with click-man: typer 0.28 vendors its own
click, which click-man does not know.
"""

from __future__ import annotations

from typing import Any

from registry_client import __version__

SECTIONS = """\
.SH EXIT STATUS
0 ok, 1 unexpected error, 2 bad usage or reference, 3 not found, 4 integrity failure
(nothing published), 5 authentication or permission, 6 remote unavailable after retries,
130 interrupted.
.SH ENVIRONMENT
.TP
.B REGISTRY_CLIENT_CONFIG
the user's config file (default \\fI$XDG_CONFIG_HOME/registry\\-client/config.toml\\fR)
.TP
.B REGISTRY_CLIENT_SITE_CONFIG
the site file (default \\fI/etc/registry\\-client/config.toml\\fR)
.TP
.B REGISTRY_CLIENT_CACHE_DIR
the node cache (default \\fI$XDG_CACHE_HOME/registry\\-client\\fR)
.TP
.B REGISTRY_CLIENT_DEFAULT_REMOTE, REGISTRY_CLIENT_CACHE_LOCKING
override the config's default remote and cache locking
.TP
.B AWS_*, OS_*, ST_*
credentials and endpoints of s3:// and swift:// URLs, as the AWS and OpenStack tools read them
.SH FILES
.TP
.I /etc/registry\\-client/config.toml
site configuration: remotes, cache location and policy for every user of the node
.TP
.I ~/.config/registry\\-client/config.toml
the user's configuration, read over the site file
.SH SEE ALSO
apptainer(1), singularity(1); docs/ in the source: config.md, cache.md, hpc.md
"""


def _esc(text: str) -> str:
    text = text.replace("\\", "\\\\").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in ".'" else line for line in text.splitlines())


def _params(command: Any) -> list[str]:
    out = []
    for param in command.params:
        if getattr(param, "hidden", False) or param.name == "help":
            continue
        if param.param_type_name == "argument":
            out += [".TP", f".I {param.human_readable_name.upper()}"]
        else:
            names = ", ".join([*param.opts, *param.secondary_opts])
            value = "" if param.is_flag or param.count else f" {param.name.upper()}"
            out += [".TP", f".B {_esc(names)}{_esc(value)}"]
        out.append(_esc(getattr(param, "help", None) or ""))
    return out


def _commands(group: Any, prefix: str) -> list[str]:
    out = []
    for name, command in group.commands.items():
        path = f"{prefix} {name}".strip()
        if hasattr(command, "commands"):
            out += _commands(command, path)
            continue
        args = [
            p.human_readable_name.upper() + ("..." if p.nargs == -1 else "")
            for p in command.params
            if p.param_type_name == "argument"
        ]
        usage = " ".join([path, "[OPTIONS]", *args])
        out += [f".SS {_esc(usage)}", _esc(command.help or ""), *_params(command)]
    return out


def render(root: Any) -> str:
    """The man page of `root`, the CLI's click command (typer.main.get_command(app))."""
    lines = [
        f'.TH REGISTRY\\-CLIENT 1 "" "registry-client {__version__}" "User Commands"',
        ".SH NAME",
        "registry\\-client \\- " + _esc(root.help or ""),
        ".SH SYNOPSIS",
        ".B registry\\-client",
        "[\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]... [\\fIGLOBAL OPTIONS\\fR]",
        ".SH GLOBAL OPTIONS",
        "They go before or after the command.",
        *_params(root),
        ".SH COMMANDS",
        *_commands(root, ""),
        SECTIONS.rstrip("\n"),
    ]
    return "\n".join(lines) + "\n"
