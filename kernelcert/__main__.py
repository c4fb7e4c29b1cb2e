"""`python -m kernelcert` = the `kernelcert` command (see kernelcert.cli)."""

import sys

from .cli import main

sys.exit(main())
