"""Subjects that misbehave, for tests/test_subjects.py: named on the command line as
`--subject tests.subject_stubs:NAME`, as a user's would be."""
from parity_tests.port_subject import PortSubject
from parity_tests.subject import Subject, assign_weights


def raising():
    raise RuntimeError("no licence server")


def not_a_subject():
    return object()


class DroppedWeight(Subject):
    """A key map that sends one of its weights to a canonical name that does not exist."""
    name = "dropped-weight"
    offers = frozenset({"probes"})
    KEY_MAP = {"bbox_head.gfl_cls.weight": "bbox_head.cls_logits.weight"}

    def build(self, model_cfg, state):
        assign_weights(list(state), state, self.KEY_MAP, self.name)

    def run(self, batch, mode, gradients=False):
        raise AssertionError("never reached: build refuses")


def dropped_weight():
    return DroppedWeight()


def probes_only():
    """Our PyTorch port offering its probes and losses only: every other check must read
    "not offered"."""
    subject = PortSubject("torch", name="torch-probes-only")
    subject.offers = frozenset({"probes", "losses"})
    return subject
