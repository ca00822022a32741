"""Logs for people debugging a node: `-v` (INFO) and `-vv` (DEBUG) on stderr, `--log-file`.

What is logged: the remote and endpoint each command opens, every request the retry
wrapper sends (what, how long), retries, and each download's bytes and time. Only this
package's loggers are wired up: botocore, urllib3 and swiftclient log request headers,
tokens and signed URLs at DEBUG, so they stay silent whatever the level. A filter redacts
what still looks like a secret (signatures, tokens, keys, passwords in URLs) in every line.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import TYPE_CHECKING, TextIO

LOGGER = "registry_client"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_SECRETS = [
    # query parameters of presigned URLs and Swift temp URLs
    (
        re.compile(
            r"((?:X-Amz-(?:Signature|Credential|Security-Token)|Signature|AWSAccessKeyId"
            r"|temp_url_sig|sig|token|access_token)=)[^&\s\"']+",
            re.IGNORECASE,
        ),
        r"\1***",
    ),
    # headers and key=value pairs that carry credentials
    (
        re.compile(
            r"((?:authorization|x-auth-token|x-storage-token|x-amz-security-token"
            r"|secret_access_key|aws_secret_access_key|password|session_token)"
            r"[\"']?\s*[:=]\s*[\"']?)[^\s,\"'}]+",
            re.IGNORECASE,
        ),
        r"\1***",
    ),
    (re.compile(r"(://)[^/@\s]+@"), r"\1***@"),  # user:password@host
]


def redact(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


if TYPE_CHECKING:
    _Handler = logging.StreamHandler[TextIO]
else:  # not subscriptable at run time before Python 3.11
    _Handler = logging.StreamHandler


class _Stderr(_Handler):
    """Writes to whatever sys.stderr is when a record comes (as logging.lastResort)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


class OneLine(logging.Filter):
    """Warnings that reach stderr without -v: one `warning:` line each, control
    characters escaped and secrets redacted, like every other line the CLI prints."""

    def filter(self, record: logging.LogRecord) -> bool:
        from registry_client.console import one_line

        record.msg = one_line(redact(record.getMessage()))
        record.args = None
        return True


def setup(verbosity: int, log_file: str | None = None) -> None:
    """Route this package's logs to stderr (with -v) and to `log_file` (0600, appended).

    Libraries' own warnings never reach stderr (Python would print them raw, server text
    included, through its last-resort handler); this package's go there as `warning:`
    lines even without -v."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())
    if not verbosity and not log_file:
        logger = logging.getLogger(LOGGER)
        if not any(isinstance(h.filters[0], OneLine) for h in logger.handlers if h.filters):
            warnings = _Stderr()
            warnings.setLevel(logging.WARNING)
            warnings.setFormatter(logging.Formatter("warning: %(message)s"))
            warnings.addFilter(OneLine())
            logger.addHandler(warnings)
        return
    level = logging.DEBUG if verbosity >= 2 else logging.INFO
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level)
    logger.propagate = False
    handlers: list[logging.Handler] = []
    if verbosity:
        handlers.append(logging.StreamHandler(sys.stderr))
    if log_file:
        handlers.append(logging.StreamHandler(_open_log(log_file)))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(RedactSecrets())
        logger.addHandler(handler)


def _open_log(path: str) -> TextIO:
    from registry_client.errors import UsageError

    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise UsageError(f"--log-file {path}: {exc.strerror}") from None
    return os.fdopen(fd, "a", buffering=1, encoding="utf-8")
