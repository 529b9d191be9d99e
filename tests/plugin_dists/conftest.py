"""The directories below are distributions installed by tests/test_plugin_venv.py.

They are test data, not tests of this suite: their modules import packages that are only
installed in that test's virtual environment.
"""

collect_ignore_glob = ["*"]
