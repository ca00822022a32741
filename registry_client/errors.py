"""The exception tree. Every error the tool raises on purpose is a RegistryClientError.

    RegistryClientError            exit 1  unexpected / generic failure
    ├── UsageError                 exit 2  bad usage
    │   ├── InvalidReference       exit 2  a reference that breaks the grammar
    │   ├── ConfigError            exit 2  unreadable, invalid or unsafe config
    │   └── Unsupported            exit 2  the store cannot do this (an optional capability)
    ├── NotFound                   exit 3  image, object, remote or cache entry missing
    ├── IntegrityError             exit 4  checksum / ETag / size mismatch; nothing published
    │   └── UnverifiableError      exit 4  ETag cannot be checked and no sha256 is known
    ├── AuthError                  exit 5  authentication or permission refused
    ├── RemoteUnavailable          exit 6  remote unreachable or failing after retries
    │   ├── ObjectChanged          exit 6  the object changed under a download (If-Match failed)
    │   └── Stalled                exit 6  a read made no progress for [transfer] stall_timeout
    └── Interrupted                exit 130

The CLI turns each into one `error: ...` line plus an optional hint on stderr.
Messages must never contain secrets: build them from names, not from credentials.
"""

from __future__ import annotations


class RegistryClientError(Exception):
    """Base of every error this package raises deliberately."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(RegistryClientError):
    exit_code = 2


class InvalidReference(UsageError):
    pass


class ConfigError(UsageError):
    pass


class Unsupported(UsageError):
    pass


class NotFound(RegistryClientError):
    exit_code = 3


class IntegrityError(RegistryClientError):
    exit_code = 4


class UnverifiableError(IntegrityError):
    pass


class AuthError(RegistryClientError):
    exit_code = 5


class RemoteUnavailable(RegistryClientError):
    """Transient by default: the retry wrapper tries again, then gives up with exit 6."""

    exit_code = 6
    retryable = True

    def __init__(
        self, message: str, *, hint: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class ObjectChanged(RemoteUnavailable):
    """The object's ETag changed while we were reading it (HTTP 412 on If-Match).

    Not retried range by range: the whole pull starts again from a fresh stat.
    """

    retryable = False


class Stalled(RemoteUnavailable):
    """A read that delivered nothing for `[transfer] stall_timeout` seconds: stopped and
    retried like a broken connection, but an attempt that ended this way never renews
    the retry budget (a body that trickles forever must end in exit 6)."""


class Interrupted(RegistryClientError):
    exit_code = 130
