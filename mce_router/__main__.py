"""``python -m mce_router``: the same as the ``mce-router`` command."""

import sys

from .cli import main

sys.exit(main())
