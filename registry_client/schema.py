"""What a config file may hold: every table's keys, and the type of every value.

One mechanism for the whole file. A key that its table does not know is a typo, refused
with the closest known key as a hint (a misspelt `endpoint_url` would silently send a
remote's requests to AWS). A value of the wrong type is refused, never coerced: TOML has
real booleans and integers, and `shared = "false"` — a non-empty string — must not turn
sharing on. Both are ConfigError (exit 2), naming the file, the table and the key.

Light on purpose: the console script's fast path loads the config for every cache hit.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from registry_client.errors import ConfigError


@dataclass(frozen=True)
class Kind:
    """The type of one value: what it is called in messages, a test, and how a command-line
    string (`remote add --option K=V`) becomes such a value."""

    what: str
    accepts: Callable[[Any], bool]
    parse: Callable[[str], Any] = str

    def from_text(self, text: str) -> Any:
        try:
            value = self.parse(text)
        except ValueError:
            return text  # refused by `accepts`, with the usual message
        return value


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise ValueError(text)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


STRING = Kind("a string", lambda v: isinstance(v, str))
BOOLEAN = Kind(
    "true or false (a TOML boolean, without quotes)", lambda v: isinstance(v, bool), _parse_bool
)
POSITIVE_INT = Kind("a positive integer", lambda v: _is_int(v) and v > 0, int)
POSITIVE_NUMBER = Kind("a positive number", lambda v: _is_number(v) and v > 0, float)


def one_of(*choices: str) -> Kind:
    return Kind(f"one of {', '.join(map(repr, choices))}", lambda v: v in choices)


def between(low: float, high: float, *, integer: bool = False) -> Kind:
    """A number (an integer with `integer`) from low to high."""
    test = _is_int if integer else _is_number
    what = f"{'an integer' if integer else 'a number'} from {low:g} to {high:g}"
    return Kind(what, lambda v: test(v) and low <= v <= high, int if integer else float)


def proxy_url(text: str) -> str | None:
    """`text` as http(s)://HOST[:PORT] (no path, query or credentials), else None."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


#: Caching HTTP proxies, tried in order (docs/fleet.md): at most 8, e.g. rack, then site.
PROXY_LIST = Kind(
    'a list of up to 8 URLs such as ["http://rack7-cache:8080", "http://site-cache:8080"]',
    lambda v: (
        isinstance(v, list) and len(v) <= 8 and all(isinstance(u, str) and proxy_url(u) for u in v)
    ),
)


#: A table's schema: key → Kind, or key → the schema of a sub-table.
Schema = Mapping[str, "Kind | Schema"]


def check_table(table: Any, schema: Schema, where: str, source: object) -> dict[str, Any]:
    """`table` if every key is in `schema` and every value of its kind; else ConfigError.

    `where` names the table in messages (`[cache]`, `[remotes.lab]`), `source` the file.
    Sub-tables are checked the same way, so no key anywhere escapes the check.
    """
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: {where or 'the config'} must be a table")
    for key, value in table.items():
        if key not in schema:
            raise unknown_key(key, schema, where, source)
        kind = schema[key]
        if isinstance(kind, Kind):
            if not kind.accepts(value):
                raise wrong_type(key, value, kind, where, source)
        else:
            check_table(value, kind, f"[{_dotted(where, key)}]", source)
    return table


def unknown_key(key: str, schema: Schema, where: str, source: object) -> ConfigError:
    known = sorted(schema)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
    place = f" in {where}" if where else ""
    return ConfigError(f"{source}: unknown key {key!r}{place}", hint=hint)


def wrong_type(key: str, value: Any, kind: Kind, where: str, source: object) -> ConfigError:
    place = f"{where} " if where else ""
    hint = f"fix {key} in {source}"
    if isinstance(value, str) and kind.accepts(meant := kind.from_text(value)):
        hint = f"write {key} = {_toml(meant)}, without quotes"
    return ConfigError(
        f"{source}: {place}{key} must be {kind.what}, not {_describe(value)}", hint=hint
    )


def _toml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _dotted(where: str, key: str) -> str:
    return f"{where.strip('[]')}.{key}" if where else key


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"
