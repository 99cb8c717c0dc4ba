"""`python -m openhart` is the `openhart` command."""

import sys

from .cli import main

sys.exit(main())
