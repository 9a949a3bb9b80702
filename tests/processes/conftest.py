"""Fixtures the process tests share."""

# Imported here, a fixture is available to every test module in this folder without each
# module importing it (which would shadow the fixture's name with a test's parameter).
from workers_helpers import server  # noqa: F401 - the `server` fixture: an embedded server per test
