"""GFocalV2 in two frameworks: shared code here, one sub-package per port.

Importing `gfocal` imports neither torch nor jittor; `gfocal.pytorch` and `gfocal.jittor`
each import only their own framework.
"""
__version__ = "0.1.0"
