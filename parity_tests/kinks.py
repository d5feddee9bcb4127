"""ReLU kinks: where the two ports take different sides of a ReLU.

A ReLU input within float32 rounding of zero can come out -2e-7 in one framework and +4e-7 in
the other (their convolution sums and fused element-wise kernels round differently). The
forward barely moves, but the gradient of that one element passes in one port and is zero
in the other, and everything upstream of it moves by up to 1e-2 of its largest gradient
(measured: parity_tests/TOLERANCES.md, "ReLU kinks"). Such a flip says nothing about the
port; a wrong ReLU input would.

So the suite records the input of every ReLU call in both ports (`probes.relu_calls`) and,
where their signs differ, (1) holds each such input to the forward tolerance (a flip is a
kink only where the inputs agree; a port bug moves them) and (2) compares the subject's
gradients with a reference recomputed by the PyTorch port taking the subject's side of
every ReLU (`masks`): what is left to differ is the gradient arithmetic, held to the
ordinary gradient tolerance.
"""
from dataclasses import dataclass

import numpy as np

from parity_tests import judge


@dataclass
class Kink:
    call: int        # index of the ReLU call in forward order
    module: str      # the ReLU module's name in the model
    flips: int       # elements whose sign differs between the ports
    where: tuple     # the first of them
    reference: float  # the PyTorch port's input there
    subject: float   # the subject's input there

    @property
    def name(self):
        return f"relu_input.{self.module}#{self.call}"


def same_calls(reference, subject):
    """Both ports make the same ReLU calls in the same order (a mirror check)."""
    names = [name for name, _ in reference], [name for name, _ in subject]
    assert names[0] == names[1], f"the ports call their ReLUs differently: {names}"


def kinks(reference, subject):
    """The calls whose input signs differ, as Kink records, in call order."""
    same_calls(reference, subject)
    found = []
    for call, ((module, ref), (_, got)) in enumerate(zip(reference, subject)):
        flipped = (ref > 0) != (got > 0)
        if flipped.any():
            where = tuple(int(i) for i in np.argwhere(flipped)[0])
            found.append(Kink(call, module, int(flipped.sum()), where, float(ref[where]),
                              float(got[where])))
    return found


def masks(subject, found):
    """{call: the subject's side of its ReLU} for the calls with kinks."""
    return {kink.call: subject[kink.call][1] > 0 for kink in found}


def rows(found, reference, subject, float64):
    """One forward-tolerance row per call with a kink: its ReLU input, subject vs
    reference, with the float32-vs-float64 noise of that input."""
    out = []
    for kink in found:
        ref, got = reference[kink.call][1], subject[kink.call][1]
        row = judge.error_stats(kink.name, got, ref)
        row.noise = judge.error_stats(kink.name, ref, float64[kink.call][1]).rel
        row.tolerance = judge.tolerance(kink.name, row.noise, kind="forward")
        row.note = (f"{kink.flips} sign flip(s), e.g. at {kink.where}: "
                    f"{kink.reference:.2e} vs {kink.subject:.2e}; reference takes the "
                    f"subject's side")
        out.append(row)
    return out
