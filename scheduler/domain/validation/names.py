"""Names, free text and container image references."""

from __future__ import annotations

import re
from typing import Final

from scheduler.domain.errors import FieldViolation
from scheduler.domain.limits import (
    DNS_LABEL_MAX_LENGTH,
    IMAGE_NAME_MAX_LENGTH,
    IMAGE_REFERENCE_MAX_LENGTH,
)
from scheduler.domain.validation.wording import shown, too_long

_DNS_LABEL: Final = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")
_DNS_LABEL_FORM: Final = (
    "a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter"
    " or digit, e.g. 'csv-parser'"
)


def is_dns_label(value: str) -> bool:
    """Whether ``value`` is a DNS-1123 label (check_dns_label says what is wrong when not)."""
    return len(value) <= DNS_LABEL_MAX_LENGTH and _DNS_LABEL.fullmatch(value) is not None


def check_dns_label(value: str, field: str, *, what: str = "name") -> list[FieldViolation]:
    """A DNS-1123 label, the shape Kubernetes demands of the names it derives from ours."""
    if not value:
        return [FieldViolation(field, f"{what} is required; use {_DNS_LABEL_FORM}")]
    if len(value) > DNS_LABEL_MAX_LENGTH:
        return [
            too_long(
                field, len(value), DNS_LABEL_MAX_LENGTH, f"the {what} must be {_DNS_LABEL_FORM}"
            )
        ]
    if not _DNS_LABEL.fullmatch(value):
        return [FieldViolation(field, f"{what} {shown(value)} is not {_DNS_LABEL_FORM}")]
    return []


def check_text(value: str, field: str, *, max_len: int) -> list[FieldViolation]:
    """Free text such as a description: bounded, and storable in a PostgreSQL text column."""
    if len(value) > max_len:
        return [too_long(field, len(value), max_len, "shorten it")]
    if "\x00" in value:
        # PostgreSQL text cannot hold NUL; reject it here rather than fail at the INSERT.
        return [FieldViolation(field, "contains a NUL character; remove it")]
    return []


# The docker distribution grammar, rewritten so that no two alternatives can match the same text:
# its separator `[-]*` may be empty, which makes Python's backtracking engine exponential.
_IMAGE_PATH: Final = re.compile(
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)
_IMAGE_DOMAIN: Final = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
)
_IMAGE_TAG: Final = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_IMAGE_DIGEST: Final = re.compile(
    r"(?P<algorithm>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*):(?P<hex>[0-9a-fA-F]{32,})"
)
# The registered algorithms have a fixed length; a truncated hash would never match a manifest.
_DIGEST_HEX_LENGTH: Final = {"sha256": 64, "sha384": 96, "sha512": 128}
_IMAGE_FORM: Final = (
    "use [registry[:port]/]repository[:tag][@digest], e.g. 'python:3.11-slim' or"
    " 'registry.example.com/team/app:1.2'"
)


def check_image_reference(value: str, field: str) -> list[FieldViolation]:
    """A container image reference as docker and Kubernetes parse it."""
    if not value:
        return [FieldViolation(field, f"is required; {_IMAGE_FORM}")]
    if len(value) > IMAGE_REFERENCE_MAX_LENGTH:
        return [too_long(field, len(value), IMAGE_REFERENCE_MAX_LENGTH, _IMAGE_FORM)]
    problem = _image_reference_problem(value)
    if problem is None:
        return []
    return [
        FieldViolation(
            field, f"{shown(value)} is not a container image reference: {problem}; {_IMAGE_FORM}"
        )
    ]


def _image_reference_problem(reference: str) -> str | None:
    name_and_tag, at, digest = reference.partition("@")
    if at:
        problem = _digest_problem(digest)
        if problem:
            return problem
    name, tag = _split_tag(name_and_tag)
    if tag == "":
        return "the tag after ':' is empty"
    if tag is not None and not _IMAGE_TAG.fullmatch(tag):
        return (
            f"the tag {shown(tag)} must be 1-128 letters, digits, '_', '.' or '-',"
            " not starting with '.' or '-'"
        )
    return _name_problem(name)


def _name_problem(name: str) -> str | None:
    if not name:
        return "the repository name is missing"
    if len(name) > IMAGE_NAME_MAX_LENGTH:
        return (
            f"the name is {len(name)} characters long, at most {IMAGE_NAME_MAX_LENGTH} are accepted"
        )
    domain, path = _split_domain(name)
    if domain is not None and not _IMAGE_DOMAIN.fullmatch(domain):
        return f"{shown(domain)} is not a registry host with an optional :port"
    if _IMAGE_PATH.fullmatch(path):
        return None
    if _IMAGE_PATH.fullmatch(path.lower()):
        return "the repository path must be lowercase"
    return (
        "the repository path must be '/'-separated components of lowercase letters and digits,"
        " joined within a component by '.', '_', '__' or dashes"
    )


def _digest_problem(digest: str) -> str | None:
    match = _IMAGE_DIGEST.fullmatch(digest)
    if match is None:
        return f"the digest {shown(digest)} must be algorithm:hex with at least 32 hex digits"
    expected = _DIGEST_HEX_LENGTH.get(match["algorithm"])
    if expected is not None and len(match["hex"]) != expected:
        return f"a {match['algorithm']} digest has exactly {expected} hex digits"
    return None


def _split_tag(name_and_tag: str) -> tuple[str, str | None]:
    # A colon before the last '/' belongs to the registry's port, not to a tag.
    colon = name_and_tag.rfind(":")
    if colon > name_and_tag.rfind("/"):
        return name_and_tag[:colon], name_and_tag[colon + 1 :]
    return name_and_tag, None


def _split_domain(name: str) -> tuple[str | None, str]:
    # Docker's rule: the first component is a registry only if it looks like a host, so
    # 'team/app' is a Docker Hub repository and 'UPPER/case' is not a registry named UPPER.
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return None, name
