"""The command line (typer): global options in a callback, sub-apps per command group.

Exit codes and error lines follow the contract: `error: ...` (+ `hint: ...`) on stderr,
a traceback only with -v. Heavy modules (boto3, swiftclient) are imported by the
backends, only when a command needs the network.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from registry_client import __version__
from registry_client.console import ConsoleReporter, one_line, print_error, write_result
from registry_client.errors import Interrupted, RegistryClientError, UsageError
from registry_client.settings import MIGRATE_JOBS

app = typer.Typer(
    name="registry-client",
    help="Push SIF images to S3/Swift buckets and pull them into a verified node cache.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
cache_app = typer.Typer(help="Manage the node cache.", no_args_is_help=True)
remote_app = typer.Typer(help="Manage named remotes in the config file.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
app.add_typer(remote_app, name="remote")

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")
]


@dataclass
class Globals:
    config_path: str | None = None
    cache_dir: str | None = None
    quiet: bool = False
    verbose: int = 0
    json: bool = False
    progress: bool | None = None

    def reporter(self) -> ConsoleReporter:
        return ConsoleReporter(quiet=self.quiet, verbose=bool(self.verbose), progress=self.progress)

    def config(self) -> Any:
        from registry_client.config import load_config

        return load_config(self.config_path)

    def context(self) -> Any:
        from registry_client.context import open_context

        return open_context(self.config_path, self.cache_dir, self.reporter())


def _g(ctx: typer.Context) -> Globals:
    return ctx.ensure_object(Globals)


def _emit(ctx: typer.Context, as_json: bool, data: Any, text: str | None) -> None:
    write_result(data, text, as_json=as_json or _g(ctx).json)


def _done(ctx: typer.Context, message: str) -> None:
    """What a command that changes something did, on stderr (not with -q)."""
    _g(ctx).reporter().info(message)


def _man_page(value: bool) -> None:
    if value:
        from registry_client.manpage import render

        sys.stdout.write(render(typer.main.get_command(app)))
        raise typer.Exit()


def _version(value: bool) -> None:
    if value:
        print(f"registry-client {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    config: Annotated[
        str | None,
        typer.Option("--config", envvar="REGISTRY_CLIENT_CONFIG", help="Config file (TOML)."),
    ] = None,
    cache_dir: Annotated[
        str | None,
        typer.Option("--cache-dir", help="Node cache root [env REGISTRY_CLIENT_CACHE_DIR]."),
    ] = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only errors on stderr.")] = False,
    verbose: Annotated[
        int,
        typer.Option(
            "-v",
            "--verbose",
            count=True,
            help="Logs on stderr: endpoints, requests, retries, bytes, timings; tracebacks. "
            "-vv: each ranged read too.",
        ),
    ] = 0,
    log_file: Annotated[
        str | None,
        typer.Option("--log-file", help="Also append the logs to this file (created 0600)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON on stdout for every command.")
    ] = False,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress", help="Progress bars on stderr (default: if a TTY)."
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
    man_page: Annotated[
        bool,
        typer.Option(
            "--man-page", callback=_man_page, is_eager=True, help="Print the man page (roff)."
        ),
    ] = False,
) -> None:
    """Push SIF images to S3/Swift buckets and pull them into a verified node cache."""
    ctx.obj = Globals(config, cache_dir, quiet, verbose, as_json, progress)
    from registry_client.logs import setup

    setup(verbose, log_file)


# -- image commands ------------------------------------------------------------------


# docker://, library:// and shub:// (registry_client.fetch); env and config fill the gaps.
ArchOpt = Annotated[
    str | None,
    typer.Option(
        "--arch",
        help="Architecture for docker:// and library:// (amd64, arm64, arm/v7; "
        "default: this node's).",
    ),
]
LibraryUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--library-url", help="Library API for library:// [env REGISTRY_CLIENT_LIBRARY_URL]."
    ),
]
ShubUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--shub-url", help="Singularity Hub API for shub:// [env REGISTRY_CLIENT_SHUB_URL]."
    ),
]


@app.command()
def pull(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="[REMOTE:]COLLECTION/NAME[:TAG][@sha256:HEX] or URL")],
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="Also place it here.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Download again even if cached.")] = False,
    offline: Annotated[
        bool, typer.Option("--offline", help="Use the cache only; no network.")
    ] = False,
    arch: ArchOpt = None,
    library_url: LibraryUrlOpt = None,
    shub_url: ShubUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Download once, verify, publish atomically; print the image's path."""
    from registry_client.fetch import pull_any
    from registry_client.names import parse_reference
    from registry_client.sources import FetchOptions

    parsed = parse_reference(ref)  # a bad reference is exit 2 before any config is read
    result = pull_any(
        _g(ctx).context(),
        parsed,
        output=output,
        force=force,
        offline=offline,
        options=FetchOptions(arch, library_url, shub_url),
    )
    _emit(ctx, as_json, result.to_dict(), result.path)


@app.command()
def resolve(
    ctx: typer.Context,
    refs: Annotated[list[str], typer.Argument(help="[REMOTE:]COLLECTION/NAME[:TAG] or URL")],
    as_json: JsonOpt = False,
) -> None:
    """Pin references to the digests the store holds now: prints REF@sha256:HEX."""
    from registry_client.batch import resolve as do_resolve

    rows = do_resolve(_g(ctx).context(), refs)
    _emit(ctx, as_json, rows, "\n".join(r["pinned"] for r in rows))


@app.command()
def push(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="A SIF image file.")],
    ref: Annotated[str, typer.Argument(help="[REMOTE:]COLLECTION/NAME[:TAG] or URL")],
    label: Annotated[
        list[str] | None, typer.Option("--label", help="K=V label stored with the image.")
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Refuse files that are not SIF.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Verify FILE, upload it (multipart/SLO, parallel), write metadata; print its digest."""
    from registry_client.names import parse_image_ref
    from registry_client.service import push as do_push

    parsed = parse_image_ref(ref)
    labels = _parse_labels(label or [])
    result = do_push(_g(ctx).context(), file, parsed, labels=labels, strict=strict)
    _emit(ctx, as_json, result.to_dict(), f"sha256:{result.sha256}")


def _parse_labels(items: list[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


@app.command("ls")
def list_cmd(
    ctx: typer.Context,
    target: Annotated[str | None, typer.Argument(help="REMOTE[:COLLECTION] or bucket URL")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List images: ref, size, digest, pushed."""
    from registry_client.service import list_remote

    records = list_remote(_g(ctx).config(), target)
    _emit(ctx, as_json, records, _table(records, ("ref", "size", "digest", "pushed")))


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    if not rows:
        return ""
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    header = (c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))
    lines = ["  ".join(header).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str) and value.startswith("sha256:"):
        return value[:19]
    return one_line(str(value), 200)  # names, labels, descriptions: what remotes sent


@app.command()
def rm(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument()],
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete an image (and its segments)."""
    from registry_client.names import parse_image_ref
    from registry_client.service import remove

    key = remove(_g(ctx).context(), parse_image_ref(ref), dry_run=dry_run)
    _done(ctx, f"{'would delete' if dry_run else 'deleted'} {ref} (object {key})")
    _emit(ctx, as_json, {"deleted": None if dry_run else ref, "key": key, "dry_run": dry_run}, None)


@app.command()
def tag(
    ctx: typer.Context,
    src: Annotated[str, typer.Argument()],
    dst: Annotated[str, typer.Argument()],
    as_json: JsonOpt = False,
) -> None:
    """New tag for the same content (server-side copy)."""
    from registry_client.names import parse_image_ref
    from registry_client.service import tag as do_tag

    record = do_tag(_g(ctx).context(), parse_image_ref(src), parse_image_ref(dst))
    _done(ctx, f"tagged {src} as {dst} ({record.get('digest') or 'no digest recorded'})")
    _emit(ctx, as_json, record, None)


@app.command()
def inspect(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="REF or FILE")],
    as_json: JsonOpt = False,
) -> None:
    """SIF global header, descriptors, labels, digest."""
    from registry_client.describe import describe, format_description

    data = describe(_g(ctx).context(), target)
    _emit(ctx, as_json, data, format_description(data))


@app.command()
def search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="Text to find in COLLECTION/NAME:TAG.")],
    library: Annotated[
        bool, typer.Option("--library", help="Also search the Library API.")
    ] = False,
    arch: ArchOpt = None,
    library_url: LibraryUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Find images across the configured remotes (and the Library with --library)."""
    from registry_client.migrate import search_remotes

    context = _g(ctx).context()
    rows = search_remotes(context, query)
    if library or library_url or os.environ.get("REGISTRY_CLIENT_LIBRARY_URL"):
        from registry_client.fetch import search as library_search
        from registry_client.sources import FetchOptions

        rows += library_search(context, query, FetchOptions(arch, library_url))
    _emit(ctx, as_json, rows, _table(rows, ("ref", "size", "arch", "description")))


JobsOpt = Annotated[
    int,
    typer.Option(
        "--jobs", "-j", min=1, max=64, help="Images copied at once (each also in parallel parts)."
    ),
]
PlanOpt = Annotated[
    bool, typer.Option("--dry-run", help="Show the plan (copy/skip/conflict, bytes); no writes.")
]
OverwriteOpt = Annotated[
    bool,
    typer.Option("--overwrite", help="Replace destination tags that hold other content."),
]
TempDirOpt = Annotated[
    str | None,
    typer.Option(
        "--temp-dir", help="Where parts wait on their way (default: $TMPDIR); never the cache."
    ),
]


@app.command()
def migrate(
    ctx: typer.Context,
    src: Annotated[str, typer.Argument(help="REMOTE[:COLLECTION] or bucket URL")],
    dst: Annotated[str, typer.Argument(help="REMOTE[:COLLECTION] or bucket URL")],
    jobs: JobsOpt = MIGRATE_JOBS,
    dry_run: PlanOpt = False,
    overwrite: OverwriteOpt = False,
    shard: Annotated[
        str | None,
        typer.Option("--shard", help="K/N: this machine's share of the images (0 <= K < N)."),
    ] = None,
    temp_dir: TempDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Copy every image of SRC to DST, streamed and verified; skip what DST already holds."""
    from registry_client.migrate import Options, parse_shard
    from registry_client.migrate import migrate as do_migrate

    options = Options(
        jobs=jobs,
        dry_run=dry_run,
        overwrite=overwrite,
        shard=parse_shard(shard) if shard is not None else None,
        temp_dir=temp_dir,
    )
    _run_copies(ctx, as_json, lambda context, emit: do_migrate(context, src, dst, options, emit))


@app.command()
def copy(
    ctx: typer.Context,
    src: Annotated[
        str, typer.Argument(help="Any reference: bucket, docker://, library://, shub://")
    ],
    dst: Annotated[str, typer.Argument(help="[REMOTE:]COLLECTION/NAME[:TAG] or bucket URL")],
    dry_run: PlanOpt = False,
    overwrite: OverwriteOpt = False,
    temp_dir: TempDirOpt = None,
    arch: ArchOpt = None,
    library_url: LibraryUrlOpt = None,
    shub_url: ShubUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Copy one image to DST, streamed and verified, unless DST already holds it."""
    from registry_client.names import FetcherRef, parse_image_ref, parse_reference

    parsed = parse_reference(src)
    parse_image_ref(dst)  # a fetcher reference cannot be written to: exit 2 before any I/O
    from registry_client.migrate import Options, copy_fetched, copy_image

    options = Options(jobs=1, dry_run=dry_run, overwrite=overwrite, temp_dir=temp_dir)
    if isinstance(parsed, FetcherRef):
        from registry_client.sources import FetchOptions

        fetched = FetchOptions(arch, library_url, shub_url)
        _run_copies(
            ctx,
            as_json,
            lambda context, emit: copy_fetched(context, parsed, dst, options, fetched, emit),
        )
        return
    _run_copies(ctx, as_json, lambda context, emit: copy_image(context, src, dst, options, emit))


def _run_copies(ctx: typer.Context, as_json: bool, run: Any) -> None:
    """Rows on stdout as they come (NDJSON with --json), a summary on stderr (and as the
    last JSON line); the exit code is the most severe of the rows'."""
    import json

    from registry_client.migrate import MigrationFailed, row_text

    want_json = as_json or _g(ctx).json
    context = _g(ctx).context()

    def emit(row: dict[str, Any]) -> None:
        line = json.dumps(row, separators=(",", ":")) if want_json else row_text(row)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    summary = run(context, emit)
    if want_json:
        emit({"summary": summary.to_dict()})
    context.reporter.info(summary.text())
    if summary.exit_code:
        raise MigrationFailed(summary.problem(), summary.exit_code, hint=summary.hint())


# -- cache ---------------------------------------------------------------------------


@cache_app.command("dir")
def cache_dir_cmd(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Print the cache root (made, and checked, if missing: run it as root to set up a
    shared cache)."""
    cache = _g(ctx).context().cache
    cache.ensure()
    _emit(ctx, as_json, {"path": str(cache.root)}, str(cache.root))


@cache_app.command("warm")
def cache_warm(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(help="File with one reference per line (# comments), or - for stdin."),
    ] = "-",
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Pulls at a time.")] = 4,
    arch: ArchOpt = None,
    library_url: LibraryUrlOpt = None,
    shub_url: ShubUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Pull a list of references into the cache, in parallel (prologs, staging)."""
    from registry_client.batch import read_reference_list, warm
    from registry_client.sources import FetchOptions

    refs = read_reference_list(_read_lines(source))
    g = _g(ctx)
    context = g.context()
    context.reporter = ConsoleReporter(quiet=g.quiet, verbose=bool(g.verbose), progress=False)
    report = warm(context, refs, jobs=jobs, options=FetchOptions(arch, library_url, shub_url))
    lines = [f"{r['ref']}\t{r.get('path') or 'FAILED'}" for r in report.results]
    _done(ctx, report.summary())
    _emit(ctx, as_json, report.to_dict(), "\n".join(lines) or None)
    if report.failed:  # the report (JSON too) is out: only the error line and the code
        worst = report.failed[0]
        print_error(
            RegistryClientError(
                f"{len(report.failed)} of {len(refs)} reference(s) could not be pulled, "
                f"the first: {worst['ref']}",
                hint="each failure is a warning above; run `cache warm` again to retry them",
            )
        )
        raise typer.Exit(worst["exit"])


def _read_lines(source: str) -> list[str]:
    if source == "-":
        return sys.stdin.read().splitlines()
    try:
        with open(source, encoding="utf-8") as fh:
            return fh.read().splitlines()
    except FileNotFoundError:
        raise UsageError(f"{source}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {source}: {exc}") from None


@cache_app.command("ls")
def cache_ls(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List cached images."""
    from registry_client.maintenance import cache_listing

    rows = cache_listing(_g(ctx).context().cache)
    text_rows = [{**r, "refs": ",".join(r["refs"]) or "-"} for r in rows]
    _emit(ctx, as_json, rows, _table(text_rows, ("digest", "size", "refs", "path")))


@cache_app.command("import")
def cache_import(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="The image, delivered by another tool (sbcast).")],
    ref: Annotated[str, typer.Argument(help="[REMOTE:]COLLECTION/NAME[:TAG][@sha256:HEX] or URL")],
    as_json: JsonOpt = False,
) -> None:
    """Verify FILE against REF in its remote and publish it atomically; print its path."""
    from registry_client.names import parse_image_ref
    from registry_client.service import import_file

    result = import_file(_g(ctx).context(), file, parse_image_ref(ref))
    _emit(ctx, as_json, result.to_dict(), result.path)


@cache_app.command("clean")
def cache_clean(ctx: typer.Context, dry_run: DryRunOpt = False, as_json: JsonOpt = False) -> None:
    """Remove everything from the cache (no question asked; see --dry-run)."""
    cache = _g(ctx).context().cache
    entries = [e for e in cache.entries() if cache.may_remove(e)]  # a shared cache: ours
    freed = sum(e.size for e in entries) if dry_run else cache.clean()
    verb = "would remove" if dry_run else "removed"
    _done(ctx, f"{verb} {len(entries)} image(s), {_mib(freed)} from {cache.root}")
    _emit(ctx, as_json, {"freed": freed, "images": len(entries), "dry_run": dry_run}, None)


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


@cache_app.command("verify")
def cache_verify(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Re-hash every cached image and layer blob; quarantine damaged ones (exit 4 if any)."""
    from registry_client.errors import IntegrityError
    from registry_client.maintenance import verify_cache

    report = verify_cache(_g(ctx).context().cache)
    _done(ctx, f"verified {report.checked} image(s) and layer blob(s): {len(report.bad)} damaged")
    lines = [
        f"{b['digest']}: damaged {b['kind']}, "
        + (f"moved to {b['moved_to']}" if b["moved_to"] else f"left at {b['path']} (not yours)")
        for b in report.bad
    ]
    _emit(ctx, as_json, report.to_dict(), "\n".join(lines) or None)
    if report.bad:
        raise IntegrityError(
            f"{len(report.bad)} of {report.checked} cached files were damaged and quarantined",
            hint="the next pull fetches them again",
        )


@cache_app.command("prune")
def cache_prune(
    ctx: typer.Context,
    max_age: Annotated[
        str | None,
        typer.Option(
            "--max-age", help="Remove images unused for this long (7d, 12h; a unit is required)."
        ),
    ] = None,
    max_size: Annotated[
        str | None,
        typer.Option(
            "--max-size", help="Then remove least-recently used down to this total (20G, 500M)."
        ),
    ] = None,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove old or excess images (never one a running pull holds) and stale temp files."""
    from registry_client.maintenance import prune_cache
    from registry_client.units import parse_age, parse_size

    try:
        age = parse_age(max_age) if max_age is not None else None
        size = parse_size(max_size) if max_size is not None else None
    except ValueError as exc:
        raise UsageError(str(exc), hint="e.g. cache prune --max-age 7d --max-size 20G") from None
    report = prune_cache(_g(ctx).context().cache, max_age=age, max_size=size, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    _done(
        ctx,
        f"{verb} {len(report.removed)} image(s), {_mib(report.freed)}; "
        f"{len(report.kept_in_use)} kept in use; {report.temps_removed} stale temp file(s)",
    )
    _emit(ctx, as_json, {**report.to_dict(), "dry_run": dry_run}, None)


# -- remotes ---------------------------------------------------------------------------


@remote_app.command("add")
def remote_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Remote name.")],
    url: Annotated[
        str, typer.Argument(help="s3://BUCKET[/PREFIX], swift://CONTAINER[/PREFIX] or file:///DIR")
    ],
    endpoint_url: Annotated[str | None, typer.Option("--endpoint-url")] = None,
    region: Annotated[str | None, typer.Option("--region")] = None,
    profile: Annotated[str | None, typer.Option("--profile")] = None,
    auth_url: Annotated[str | None, typer.Option("--auth-url", help="Swift auth URL.")] = None,
    option: Annotated[
        list[str] | None, typer.Option("--option", help="K=V extra remote option.")
    ] = None,
    default: Annotated[bool, typer.Option("--default", help="Make it the default remote.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Add (or replace) a named remote. Secrets belong in env vars or a 0600 file."""
    from registry_client.remote_admin import add_remote

    extra = _parse_labels(option or [])
    config = _g(ctx).config()
    replaced = name in config.remotes
    remote = add_remote(
        config,
        name,
        url,
        default=default,
        options={
            "endpoint_url": endpoint_url,
            "region": region,
            "profile": profile,
            "auth_url": auth_url,
            **extra,
        },
    )
    verb = "replaced" if replaced else "added"
    _done(ctx, f"{verb} remote {name!r} ({url}) in {config.path}{' (default)' if default else ''}")
    _emit(ctx, as_json, remote.public(), None)


@remote_app.command("ls")
def remote_ls(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List configured remotes (secrets hidden)."""
    from registry_client.remote_admin import list_remotes

    rows = list_remotes(_g(ctx).config())
    text_rows = [
        {**r, "location": r.get("bucket") or r.get("path") or r.get("container")} for r in rows
    ]
    columns = ("name", "type", "location", "default", "source")
    _emit(ctx, as_json, rows, _table(text_rows, columns))


@remote_app.command("rm")
def remote_rm(
    ctx: typer.Context, name: Annotated[str, typer.Argument()], as_json: JsonOpt = False
) -> None:
    """Remove a named remote."""
    from registry_client.remote_admin import remove_remote

    config = _g(ctx).config()
    remove_remote(config, name)
    _done(ctx, f"removed remote {name!r} from {config.path}")
    _emit(ctx, as_json, {"removed": name}, None)


# -- entry point ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from registry_client.argv import hoist_globals

    args = hoist_globals(sys.argv[1:] if argv is None else argv)
    options = args[: args.index("--")] if "--" in args else args
    verbose = any(a in ("-v", "-vv", "-vvv", "--verbose") for a in options)
    as_json = "--json" in options
    try:
        # Not standalone: typer then returns Exit codes (130 for Ctrl-C) instead of exiting.
        code = app(args=args, prog_name="registry-client", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # click's usage errors (typer vendors click)
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare command group: its help
            exc.show()  # type: ignore[attr-defined]
            return exc.exit_code
        return _fail(_usage_error(exc), as_json)
    except (KeyboardInterrupt, typer.Abort):
        return _fail(Interrupted("interrupted"), as_json)
    except RegistryClientError as exc:
        if verbose:
            import traceback

            traceback.print_exc()
        return _fail(exc, as_json)
    except BrokenPipeError:
        return 1
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, exit 1
        if verbose:
            import traceback

            traceback.print_exc()
        error = RegistryClientError(
            f"unexpected {type(exc).__name__}: {exc}", hint="run with -v for a traceback"
        )
        return _fail(error, as_json)
    if code == 130:
        return _fail(Interrupted("interrupted"), as_json)
    return code if isinstance(code, int) else 0


def _fail(exc: RegistryClientError, as_json: bool) -> int:
    """The error on stderr; with --json also as one JSON object on stdout."""
    print_error(exc)
    if as_json:
        error = {"message": one_line(exc.message), "hint": exc.hint and one_line(exc.hint)}
        with contextlib.suppress(BrokenPipeError):
            write_result({"error": error, "exit_code": exc.exit_code}, None, as_json=True)
    return exc.exit_code


def _usage_error(exc: typer.TyperException) -> UsageError:
    """Click's multi-line usage message as the contract's `error:` + `hint:` lines."""
    command = getattr(getattr(exc, "ctx", None), "command_path", None) or "registry-client"
    return UsageError(exc.format_message(), hint=f"see `{command} --help`")
