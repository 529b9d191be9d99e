"""The per-item functions and sources every implementation shares.

Kept free of any headwater import so that the plain-Python baselines (and the memory
scenario's plain-loop child process) do not pay for it. headwater pipelines refer to
these by import path (``benchmarks.fns:double``), exactly as a YAML file would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

__all__ = [
    "anumbers",
    "double",
    "expected_sum",
    "not_div3",
    "numbers",
    "records",
    "slow_error",
]


def double(x: int) -> int:
    """The ``map`` step: ``x * 2``."""
    return x * 2


def not_div3(x: int) -> bool:
    """The ``filter`` step: keep items not divisible by 3."""
    return x % 3 != 0


def numbers(n: int) -> Iterator[int]:
    """The source of the non-headwater implementations: a generator over ``range(n)``."""
    yield from range(n)


async def anumbers(n: int) -> AsyncIterator[int]:
    """The same source as an async generator (for the async chains)."""
    for x in range(n):
        yield x


def expected_sum(n: int) -> int:
    """Closed form of ``sum(2x for x in range(n) if 2x % 3 != 0)``: the reference result."""
    total = n * (n - 1)  # sum of 2x over range(n)
    k = (n + 2) // 3  # multiples of 3 in range(n): 0, 3, ..., 3(k-1)
    return total - 6 * (k * (k - 1) // 2)


_LEVELS = ("INFO", "WARN", "ERROR", "DEBUG")


def records(n: int) -> list[dict[str, object]]:
    """``n`` log records ``{"level", "latency"}``, the same every time (the ``expr`` input)."""
    return [{"level": _LEVELS[i % 4], "latency": (i * 37 % 100) / 100} for i in range(n)]


def slow_error(record: dict[str, object]) -> bool:
    """The ``expr`` scenario's condition as a function: ``level == 'ERROR' and latency > 0.5``."""
    return record["level"] == "ERROR" and record["latency"] > 0.5  # type: ignore[operator]
