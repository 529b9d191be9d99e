"""``python -m headwater``: the same as the ``headwater`` command."""

from __future__ import annotations

import sys

from headwater.cli import main

if __name__ == "__main__":
    sys.exit(main())
