"""A pipeline's ``requires:``: the distributions it needs, checked against what is installed."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version

from .errors import ValidationIssue

__all__ = ["check_specifier", "requirement_issues"]


def check_specifier(spec: str) -> str:
    """``spec`` if it is a PEP 440 version range (``">=0.2,<1"``); raises ``ValueError``."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        SpecifierSet(spec)
    except InvalidSpecifier:
        raise ValueError(f"{spec!r} is not a version range (e.g. '>=0.2,<1')") from None
    return spec


def requirement_issues(requires: Mapping[str, str]) -> list[ValidationIssue]:
    """One issue per required distribution that is missing or of a version out of range."""
    if not requires:
        return []
    from packaging.specifiers import SpecifierSet

    issues: list[ValidationIssue] = []
    for dist, spec in requires.items():
        path = f"requires.{dist}" if dist.isidentifier() else f"requires[{dist!r}]"
        wanted = SpecifierSet(spec)
        try:
            installed = version(dist)
        except PackageNotFoundError:
            issues.append(
                ValidationIssue(
                    path,
                    f"needs {dist}{wanted}, which is not installed: pip install '{dist}{wanted}'",
                )
            )
            continue
        if not wanted.contains(installed, prereleases=True):
            issues.append(
                ValidationIssue(path, f"needs {dist}{wanted}, but {dist} {installed} is installed")
            )
    return issues
