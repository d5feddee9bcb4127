"""NaN and infinity where numbers must be finite: weights, losses, network outputs.

One exception for every place that finds them, so that each command shows one line naming
where (a checkpoint file, an iteration) instead of crashing later on the NaN (a Jittor
argsort, a cross-entropy's range check) or reporting numbers computed from it.
"""
import numpy as np


class NonFiniteError(ValueError):
    """NaN or infinite values where finite numbers are required; the message says where."""


def non_finite_names(state):
    """Names of the numeric arrays of {name: numpy array} holding a NaN or an infinity."""
    return [name for name, value in state.items()
            if np.issubdtype(np.asarray(value).dtype, np.inexact)
            and not np.isfinite(value).all()]


def check_finite_state(state, source, what="weights"):
    """Raise NonFiniteError naming `source` and the offending entries of `state`."""
    bad = non_finite_names(state)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteError(f"{source}: {len(bad)} of {len(state)} {what} tensors hold NaN "
                             f"or infinity ({shown})")


# The likely causes of non-finite network outputs, named by check_finite_outputs' message.
TRAINING_CAUSE = "so training diverged (learning rate too high?) or its weights are not finite"
INFERENCE_CAUSE = "which usually means non-finite weights"


def check_finite_outputs(cls_finite, box_finite, cause):
    """NonFiniteError naming the head's levels whose outputs hold NaN or infinity, from one
    finiteness flag per level and output (a port's finite_flags): raised before the outputs
    reach the loss (whose cross-entropy would stop on a range check) or the decoding (whose
    sorts would order NaN, or report numbers computed from it)."""
    parts = []
    for what, flags in (("class scores", cls_finite), ("box logits", box_finite)):
        bad = [str(level) for level, ok in enumerate(flags) if not ok]
        if bad:
            parts.append(f"{what} at level{'s' * (len(bad) > 1)} {', '.join(bad)}")
    if parts:
        raise NonFiniteError(f"the network's outputs hold NaN or infinity "
                             f"({'; '.join(parts)}), {cause}")
