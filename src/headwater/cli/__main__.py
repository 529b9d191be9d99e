"""``python -m headwater.cli``: the same as ``python -m headwater``."""

from __future__ import annotations

import sys

from . import main

if __name__ == "__main__":  # pragma: no cover - use ``python -m headwater``
    sys.exit(main())
