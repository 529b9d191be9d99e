"""What the conformance checks report: the check names and :class:`CheckResult`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

Status = Literal["pass", "fail", "skip", "n/a"]

CHECKS: tuple[str, ...] = (
    "params_schema",
    "cancellation",
    "progress",
    "timeout",
    "resume",
    "checkpoint_ack",
)
"""Every check, in the order they run."""


class ConformanceError(AssertionError):
    """Raised by :func:`assert_conforms` when a check fails; lists the failures."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check on one component."""

    component: str
    """The component's name."""
    kind: str
    """Its kind (``action``, ``sink``, ...)."""
    check: str
    """The check's name (one of :data:`CHECKS`)."""
    status: Status
    """``pass``, ``fail``, ``skip`` (could not be checked, see detail) or ``n/a``."""
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True unless the check failed."""
        return self.status != "fail"

    def to_dict(self) -> dict[str, str]:
        """JSON-serialisable form."""
        return dataclasses.asdict(self)
