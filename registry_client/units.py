"""Sizes and ages as people write them ("200G", "7d"): `cache prune` options and the
config's `[cache] max_size`. Light on purpose: the config check (on the fast path of every
cache hit) parses max_size with it.
"""

from __future__ import annotations

import re

SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?", re.IGNORECASE)
_AGE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
MAX_SIZE = 1 << 62  # far beyond any disk; keeps the arithmetic exact
MAX_AGE = 100 * 365 * 86400.0


def parse_size(text: str) -> int:
    """'500M', '20G', '1.5T', '1048576' → bytes (binary units); ValueError otherwise.

    No sign, no exponent, no inf/nan: a value that is not a plain size must not turn into
    "delete everything" (a negative bound) or a crash (1e999)."""
    match = _SIZE_RE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"--max-size {text!r}: expected a size such as 500M, 20G or 1.5T")
    size = float(match.group(1)) * SIZE_UNITS[match.group(2).upper()]
    if size > MAX_SIZE:  # inf included
        raise ValueError(f"--max-size {text!r} is too large")
    return int(size)


def parse_age(text: str) -> float:
    """'30d', '12h', '45m', '90s', '2w' → seconds; a unit is required (ValueError)."""
    match = _AGE_RE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"--max-age {text!r}: expected a number and a unit, e.g. 7d or 12h")
    age = float(match.group(1)) * AGE_UNITS[match.group(2).lower()]
    if age > MAX_AGE:
        raise ValueError(f"--max-age {text!r} is too large")
    return age
