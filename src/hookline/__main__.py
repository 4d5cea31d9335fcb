"""``python -m hookline`` is the ``hookline`` command."""

import sys

from hookline.cli import main

sys.exit(main())
