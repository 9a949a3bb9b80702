"""``python -m sweep_magic.worker --spec PATH --events-fd N --lifeline-fd M``: see ``main``."""

import os
import sys

from sweep_magic.worker.main import main

if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: a hung run thread (the function ignored pyagent's stop)
    # would otherwise keep a finished agent alive forever.
    os._exit(code)
