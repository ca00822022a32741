"""One verification for every byte that arrives: what was received against what its origin
says it is. Bucket objects (size, ETag or segment ETags, our sha256 metadata), registry
images and layers (the Library's sha256 and size, the Hub's md5, a docker blob's digest and
size), files imported into the cache and store-to-store copies all go through `verify`,
so a check means the same thing — and fails with the same kind of message — everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from registry_client.digests import EtagPlan
from registry_client.errors import IntegrityError

if TYPE_CHECKING:
    from pathlib import Path

    from registry_client.backends.base import ObjectInfo
    from registry_client.digests import DigestResult
    from registry_client.reporting import Reporter


@dataclass(frozen=True)
class Expect:
    """What the bytes must be; every field given is checked."""

    key: str  # names them in messages
    size: int | None = None
    sha256: str | None = None
    #: segment hashes the origin's own checksum is made of (an ETag, a registry's md5)
    plan: EtagPlan | None = None
    etag: str | None = None  # the ETag itself, for messages
    whose: str = "recorded"  # whose sha256 it is, for messages
    #: an unverifiable ETag is worth a warning (a bucket object); a registry's digest
    #: makes it moot
    warn: bool = True


def object_expect(info: ObjectInfo, plan: EtagPlan, sha256: str | None) -> Expect:
    """A bucket object: its size, its ETag (by `plan`) and our sha256 metadata or a pin."""
    return Expect(info.key, info.size, sha256, plan, info.etag)


def registry_expect(
    label: str,
    length: int,
    *,
    size: int | None = None,
    sha256: str | None = None,
    md5: str | None = None,
) -> Expect:
    """An image or layer a registry describes by its size, sha256 and/or md5 (of the
    `length` bytes the server offers)."""
    plan = None
    if md5:
        plan = EtagPlan(
            [[length]],
            lambda md5s: bool(md5s and md5s[0]) and md5s[0][0].hex() == md5,
            description=f"the registry's md5 {md5}",
            name="md5",
        )
    return Expect(label, size, sha256, plan, whose="registry's", warn=False)


def verify(
    expect: Expect, result: DigestResult, reporter: Reporter | None, local: Path | None = None
) -> tuple[str, ...]:
    """The checks passed, in order ("size", "etag" or "md5", "sha256"); IntegrityError on
    the first mismatch. `local` is the received file, hashed again only for segmentations
    less likely than those hashed on the way (EtagPlan.more_schemes)."""
    checks: list[str] = []
    if expect.size is not None:
        if result.size != expect.size:
            raise IntegrityError(
                f"{expect.key}: got {result.size} bytes, expected {expect.size}; "
                "nothing was published"
            )
        checks.append("size")
    plan = expect.plan
    if plan is not None and plan.verifiable:
        if not _segments_match(plan, result, local):
            raise IntegrityError(_mismatch(expect, plan))
        checks.append(plan.name)
    elif plan is not None and expect.warn and reporter is not None:
        reporter.warn(f"{expect.key}: ETag {expect.etag!r} cannot be verified ({plan.description})")
    if expect.sha256:
        if result.sha256 != expect.sha256:
            raise IntegrityError(
                f"{expect.key}: sha256 {result.sha256} does not match the {expect.whose} "
                f"{expect.sha256}; nothing was published"
            )
        checks.append("sha256")
    elif expect.warn and reporter is not None and not (plan is not None and plan.verifiable):
        reporter.warn(f"{expect.key}: no checksum to verify against; only the size was checked")
    return tuple(checks)


def _mismatch(expect: Expect, plan: EtagPlan) -> str:
    if plan.name == "etag":
        return (
            f"{expect.key}: content does not match its ETag {expect.etag} "
            f"({plan.description}); nothing was published"
        )
    return f"{expect.key}: content does not match {plan.description}; nothing was published"


def _segments_match(plan: EtagPlan, result: DigestResult, local: Path | None) -> bool:
    if plan.check(result.segment_md5s):
        return True
    if not (plan.more_schemes and local):
        return False
    from registry_client.transfer import hash_segments

    return plan.check(hash_segments(local, plan.more_schemes, plan.algorithm))
