"""`python -m gfocal ...` is the `gfocal` command (what `torchrun -m gfocal` needs)."""
import sys

from gfocal.cli import main

sys.exit(main())
