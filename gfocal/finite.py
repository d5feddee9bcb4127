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
