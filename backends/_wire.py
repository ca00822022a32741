"""Small helpers every network backend shares to turn wire errors into our exceptions."""

from __future__ import annotations

from collections.abc import Mapping


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a Retry-After header (any case); None when absent or an HTTP date."""
    for key, value in headers.items():
        if str(key).lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                return None
    return None


def is_transport_error(exc: BaseException) -> bool:
    """urllib3 / http.client failures: the connection broke, not the request."""
    return type(exc).__module__.startswith(("urllib3", "http.client"))


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's first line, bounded, for one-line error messages."""
    text = str(exc)
    return text.splitlines()[0][:limit] if text else ""
