"""`python -m daemon`: the same as the `tc-daemon` command, for a checkout without an install."""
import sys

from .cli import main

sys.exit(main())
