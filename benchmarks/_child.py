"""Work run in a fresh child process, reporting its own peak RSS.

``python -m benchmarks._child WORK N`` does one piece of work and prints one JSON line
``{"rss_bytes": ..., "seconds": ..., "result": ...}`` on stdout. Only the standard library
is imported up front, so that every child starts from the same footprint and a
``python_bare`` child measures the interpreter alone.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["WORK", "kept_count", "main", "peak_rss_bytes"]


def peak_rss_bytes() -> int:
    """Peak resident set size of this process image so far, in bytes.

    On Linux this is ``VmHWM`` from ``/proc/self/status``, *not* ``ru_maxrss``: Linux
    carries ``ru_maxrss`` across ``fork``/``exec``, so a child spawned by a big parent
    would report the parent's peak (the benchmark process easily holds more than the
    child being measured). Elsewhere ``ru_maxrss`` is used.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # The BSDs report KiB, macOS reports bytes.
    return int(peak if sys.platform == "darwin" else peak * 1024)


def kept_count(n: int) -> int:
    """How many of ``range(n)`` pass ``not_div3(double(x))``: those with ``x % 3 != 0``."""
    return n - (n + 2) // 3


def _python_bare(n: int) -> Any:
    return None


def _import_headwater(n: int) -> Any:
    import headwater

    return headwater.__version__


def _plain_loop(n: int) -> Any:
    from benchmarks.fns import double, not_div3, numbers

    kept = 0
    for x in numbers(n):
        y = double(x)
        if not_div3(y):
            kept += 1
    return kept


def _headwater(sink: dict[str, Any]) -> Callable[[int], Any]:
    def run(n: int) -> Any:
        import headwater
        from benchmarks import plugin

        pm = headwater.PluginManager()
        pm.load()
        pm.register(plugin, "bench")
        model = {
            "name": "bench-memory",
            "sources": {"numbers": {"action": "range", "params": {"stop": n}}},
            "steps": [
                {"transformer": "map", "params": {"fn": "benchmarks.fns:double"}},
                {"transformer": "filter", "params": {"fn": "benchmarks.fns:not_div3"}},
            ],
            "sinks": [sink],
        }
        output = headwater.run_sync(model, plugins=pm).output
        return output["items"] if isinstance(output, dict) else output

    return run


WORK: dict[str, Callable[[int], Any]] = {
    "python_bare": _python_bare,
    "import_headwater": _import_headwater,
    "plain_loop": _plain_loop,
    "headwater": _headwater({"sink": "null"}),
    "headwater_slow_sink": _headwater({"sink": "bench.slow_null", "params": {"delay": 0.001}}),
}
"""Work name -> function of N returning the result to check."""


def main(argv: list[str]) -> int:
    """Entry point: ``WORK N``."""
    if len(argv) != 2 or argv[0] not in WORK:
        print(f"usage: python -m benchmarks._child {{{','.join(WORK)}}} N", file=sys.stderr)
        return 2
    work, n = WORK[argv[0]], int(argv[1])
    start = time.perf_counter()
    result = work(n)
    seconds = time.perf_counter() - start
    print(json.dumps({"rss_bytes": peak_rss_bytes(), "seconds": seconds, "result": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
