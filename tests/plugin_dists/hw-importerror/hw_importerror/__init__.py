"""hw-importerror: a plugin that cannot be imported (test data)."""

from __future__ import annotations

raise ImportError("hw_importerror needs libfrobnicate, which is not installed")
