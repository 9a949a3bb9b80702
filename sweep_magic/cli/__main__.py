"""``python -m sweep_magic.cli``: the ``sweep-magic`` command without its console script."""

import sys

from sweep_magic.cli import main

sys.exit(main())
