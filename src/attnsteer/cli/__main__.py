"""``python -m attnsteer.cli``: the ``attnsteer`` command (as torchrun launches it)."""

import sys

from .main import main

sys.exit(main())
