"""Built-in plugins, written with the same hooks and decorators a third party uses.

Each module is declared as an entry point of the ``headwater`` group in headwater's own
``pyproject.toml``, so built-ins are discovered exactly like any installed plugin.
"""
