"""Retry policy, in one place, as a wrapper around any backend.

Transient failures (RemoteUnavailable: connection errors, timeouts, 5xx, 429) are retried
with exponential backoff and full jitter, honouring Retry-After, up to a bounded number
of attempts; then the last error surfaces (exit 6). A read that breaks mid-body resumes
from the byte it reached, pinned to the same ETag. An upload is retried step by step
(start, each part, completion), so a failed part costs that part, not the object.
ObjectChanged is not retried here: the caller starts the pull again from a fresh stat.

Each operation has exactly one retry loop: nothing wrapped here is called from inside
another retry loop (retry_call is for calls that are not backend verbs).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from registry_client.backends.base import (
    Backend,
    EtagPlan,
    Metadata,
    ObjectInfo,
    PartSource,
    Progress,
    RangeBody,
    Reader,
    ReadWatch,
    Upload,
    upload,
)
from registry_client.errors import RemoteUnavailable, Stalled

log = logging.getLogger("registry_client.retry")
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.25
    max_delay: float = 8.0
    max_retry_after: float = 30.0

    def delay(self, attempt: int, error: RemoteUnavailable) -> float:
        if error.retry_after is not None:
            return min(error.retry_after, self.max_retry_after)
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


class RetryingReader(Reader):
    """Adds retries to stat and read_range of an inner reader (a backend or a source)."""

    def __init__(
        self,
        inner: Reader,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self.policy = policy or RetryPolicy()
        self.kind = inner.kind
        self.location = inner.location
        self.limiter = inner.limiter
        self._sleep = sleep

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            start = time.monotonic()
            try:
                result = fn()
            except RemoteUnavailable as exc:
                attempt = self._backoff(what, attempt, exc)
            else:
                log.info("%s %s: %.0f ms", self.location, what, 1000 * (time.monotonic() - start))
                return result

    def _backoff(self, what: str, attempt: int, exc: RemoteUnavailable) -> int:
        return backoff(self.policy, self._sleep, what, attempt, exc)

    def stat(self, key: str) -> ObjectInfo:
        return self._call(f"stat {key}", lambda: self.inner.stat(key))

    def read_range(
        self,
        key: str,
        start: int,
        end: int,
        etag: str | None,
        *,
        watch: ReadWatch | None = None,
    ) -> Iterator[bytes]:
        attempt = 0
        pos = start
        began = time.monotonic()
        log.debug("read %s bytes %d-%d", key, start, end - 1)
        while pos < end:
            moved = 0
            try:
                for chunk in self.inner.read_range(key, pos, end, etag, watch=watch):
                    pos += len(chunk)
                    moved += len(chunk)
                    yield chunk
                if pos < end:
                    raise RemoteUnavailable(f"read {key}: body ended at {pos} of {end}")
            except RemoteUnavailable as exc:
                if watch is not None:
                    exc = watch.check(exc)  # ReadCancelled: the download is over
                if moved and not isinstance(exc, Stalled):
                    attempt = 0  # progress renews the budget; a trickle that stalls does not
                sleep = watch.pause if watch is not None and self._sleep is time.sleep else None
                attempt = backoff(
                    self.policy, sleep or self._sleep, f"read {key} @{pos}", attempt, exc
                )
                if watch is not None:
                    watch.restart()
        took = time.monotonic() - began
        log.debug(
            "read %s bytes %d-%d: %d bytes in %.0f ms",
            key,
            start,
            end - 1,
            end - start,
            took * 1000,
        )

    def open_range(
        self,
        key: str,
        start: int,
        end: int,
        etag: str | None,
        *,
        watch: ReadWatch | None = None,
    ) -> RangeBody:
        return _ResumingBody(self, key, start, end, etag, watch)

    def etag_plan(self, info: ObjectInfo) -> EtagPlan:
        return self._call(f"layout of {info.key}", lambda: self.inner.etag_plan(info))

    def shared_url(self, key: str, signed_at: int, expires: int) -> str | None:
        return self._call(f"sign {key}", lambda: self.inner.shared_url(key, signed_at, expires))

    def bypass_caches(self) -> str | None:
        return self.inner.bypass_caches()

    def close(self) -> None:
        self.inner.close()


class _ResumingBody:
    """open_range under the policy, as read_range: a body that breaks is opened again
    from the byte it reached, pinned to the same ETag; an attempt that moved bytes renews
    the budget unless it ended in a stall (a trickle does not buy retries)."""

    def __init__(
        self,
        reader: RetryingReader,
        key: str,
        start: int,
        end: int,
        etag: str | None,
        watch: ReadWatch | None,
    ) -> None:
        self.reader, self.key, self.etag, self.watch = reader, key, etag, watch
        self.start = self.pos = start
        self.end = end
        self.attempt = 0
        self.moved = 0  # bytes since the current body was opened
        self.body: RangeBody | None = None
        self.began = time.monotonic()
        log.debug("read %s bytes %d-%d", key, start, end - 1)

    def readinto(self, view: memoryview, /) -> int:
        if self.pos >= self.end:  # the caller asks whether more follows: ask the server's body
            return self.body.readinto(view[:1]) if self.body is not None and view else 0
        while True:
            try:
                if self.body is None:
                    self.body = self.reader.inner.open_range(
                        self.key, self.pos, self.end, self.etag, watch=self.watch
                    )
                    self.moved = 0
                n = self.body.readinto(view[: self.end - self.pos])
                if n == 0:
                    raise RemoteUnavailable(
                        f"read {self.key}: body ended at {self.pos} of {self.end}"
                    )
                self.pos += n
                self.moved += n
                return n
            except RemoteUnavailable as exc:
                self._retry(exc)

    def _retry(self, exc: RemoteUnavailable) -> None:
        """Drop the broken body and wait before the next one, or raise when out of budget."""
        self._drop()
        watch = self.watch
        if watch is not None:
            exc = watch.check(exc)  # ReadCancelled: the download is over
        if self.moved and not isinstance(exc, Stalled):
            self.attempt = 0
        self.moved = 0  # those bytes renew the budget once: a failed reopen moves none
        reader = self.reader
        sleep = watch.pause if watch is not None and reader._sleep is time.sleep else None
        self.attempt = backoff(
            reader.policy, sleep or reader._sleep, f"read {self.key} @{self.pos}", self.attempt, exc
        )
        if watch is not None:
            watch.restart()

    def _drop(self) -> None:
        if self.body is not None:
            body, self.body = self.body, None
            body.close()

    def close(self) -> None:
        self._drop()
        if self.pos >= self.end:
            took = (time.monotonic() - self.began) * 1000
            log.debug(
                "read %s bytes %d-%d: %d bytes in %.0f ms",
                self.key,
                self.start,
                self.end - 1,
                self.end - self.start,
                took,
            )


class RetryingBackend(RetryingReader, Backend):
    """Adds retries to every verb of an inner backend; forwards its capabilities."""

    inner: Backend

    def __init__(
        self,
        inner: Backend,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(inner, policy, sleep)
        self.capabilities = inner.capabilities

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Listings restart from scratch on failure; keys already yielded are skipped.
        seen: set[str] = set()
        attempt = 0
        while True:
            try:
                for info in self.inner.list(prefix):
                    if info.key not in seen:
                        seen.add(info.key)
                        yield info
                return
            except RemoteUnavailable as exc:
                attempt = self._backoff(f"list {prefix}", attempt, exc)

    def start_upload(self, key: str, size: int, metadata: Metadata, *, part_size: int) -> Upload:
        return self._call(
            f"upload {key}",
            lambda: self.inner.start_upload(key, size, metadata, part_size=part_size),
        )

    def put(
        self,
        key: str,
        source: str | os.PathLike[str] | PartSource,
        metadata: Metadata,
        *,
        part_size: int,
        concurrency: int,
        progress: Progress | None = None,
    ) -> ObjectInfo:
        """The inner backend's upload, each step (start, part, completion) retried alone."""
        return upload(
            self.inner,
            key,
            source,
            metadata,
            part_size=part_size,
            concurrency=concurrency,
            progress=progress,
            attempt=self._call,
        )

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", lambda: self.inner.delete(key))

    def copy(
        self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        if not self.capabilities.copy:
            return self.inner.copy(src_key, dst_key, metadata)  # Unsupported: nothing to retry
        return self._call(f"copy {src_key}", lambda: self.inner.copy(src_key, dst_key, metadata))

    def copy_from(
        self, source: Reader, info: ObjectInfo, dst_key: str, metadata: Mapping[str, str]
    ) -> ObjectInfo | None:
        if not self.capabilities.copy_from:
            return self.inner.copy_from(source, info, dst_key, metadata)
        return self._call(
            f"copy {info.key}", lambda: self.inner.copy_from(source, info, dst_key, metadata)
        )

    def resume_upload(
        self,
        key: str,
        size: int,
        metadata: Metadata,
        *,
        part_size: int,
        since: datetime | None,
    ) -> Upload | None:
        if not self.capabilities.resume:
            return self.inner.resume_upload(key, size, metadata, part_size=part_size, since=since)
        return self._call(
            f"resume upload {key}",
            lambda: self.inner.resume_upload(key, size, metadata, part_size=part_size, since=since),
        )

    def pending_uploads(self, prefix: str = "") -> set[str]:
        if not self.capabilities.resume:
            return self.inner.pending_uploads(prefix)
        return self._call(f"list uploads {prefix}", lambda: self.inner.pending_uploads(prefix))

    def discard_pending(self, key: str) -> int:
        if not self.capabilities.resume:
            return self.inner.discard_pending(key)
        return self._call(f"abort uploads of {key}", lambda: self.inner.discard_pending(key))


def backoff(
    policy: RetryPolicy,
    sleep: Callable[[float], None],
    what: str,
    attempt: int,
    exc: RemoteUnavailable,
) -> int:
    """Sleep before the next attempt and return its number, or re-raise when out of budget."""
    if not exc.retryable or attempt + 1 >= policy.attempts:
        if exc.retryable:
            exc.message = f"{exc.message} (gave up after {attempt + 1} attempts)"
        raise exc
    delay = policy.delay(attempt, exc)
    log.info("%s failed (%s); retry %d in %.2fs", what, exc.message, attempt + 1, delay)
    sleep(delay)
    return attempt + 1


def retry_call(
    what: str,
    fn: Callable[[], T],
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run one call that is not a backend verb (a registry API request) under the policy.

    Same budget and backoff as RetryingBackend, so fetchers never grow retry loops of their own.
    """
    policy = policy or RetryPolicy()
    attempt = 0
    while True:
        try:
            return fn()
        except RemoteUnavailable as exc:
            attempt = backoff(policy, sleep, what, attempt, exc)
