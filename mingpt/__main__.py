"""`python -m mingpt <job> ...` is the same as the `mingpt` command."""
import sys

from mingpt.cli import main

sys.exit(main())
