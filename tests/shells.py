"""A real IPython shell for tests, with sweep_magic loaded (as jupysql's test shell does it)."""

from __future__ import annotations

import contextlib

from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config


class TestShell(InteractiveShell):
    """An InteractiveShell whose ``run_cell`` re-raises, so a test sees the cell's error."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def run_cell(self, *args, **kwargs):
        result = super().run_cell(*args, **kwargs)
        result.raise_error()
        return result


@contextlib.contextmanager
def magic_shell():
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = TestShell.instance(config=config)
    shell.run_line_magic("load_ext", "sweep_magic")
    try:
        yield shell
    finally:
        shell.run_line_magic("unload_ext", "sweep_magic")
        TestShell.clear_instance()
