"""`python -m weights_converter ...` is the `gfocal-convert` command."""
import sys

from weights_converter.cli import main

sys.exit(main())
