"""Our two ports as subjects: the PyTorch port (the default reference, on the CPU, with its
float64 twin for the live noise; on another device a subject) and the Jittor port, both
through the same interface an outside implementation offers (parity_tests/subject.py).

They record their probes with their own `probes.capture()` (the ports are ours); an outside
subject takes them with parity_tests/hook_probes.py instead.
"""
import contextlib
import copy

import numpy as np

from gfocal.precision import INIT_SCALE, uses_loss_scale
from gfocal.schedule import learning_rate
from parity_tests.subject import Subject

OFFERS = frozenset({"probes", "losses", "gradients", "sgd", "predict", "recipe",
                    "relu_inputs", "amp"})


class PortSubject(Subject):
    """A port of gfocal/ports.py as a subject. `port_checks`: the function-level parity
    files may call its port module (`.port`): offered by a port other than the
    reference's."""

    def __init__(self, framework, device="cpu", name=None, port_checks=False, head="gfl_v2"):
        from gfocal.ports import load_port
        self.framework = framework
        self.port = load_port(framework)
        self.device = device
        self.name = name or framework
        self.head = head
        self.offers = OFFERS | ({"port"} if port_checks else set()) | (
            {"float64"} if framework == "torch" and device == "cpu" else set())
        self.model = self._model64 = None

    def build(self, model_cfg, state):
        with self.port.on_device(self.device):
            self.model = self.port.build_detector(model_cfg)
            self.port.checkpoint.load_state_dict_numpy(self.model, state,
                                                       source=f"{self.name} weights")
        self._model64 = None

    def model64(self):
        """The float64 twin (the reference's live noise), made on first use."""
        if self._model64 is None:
            self._model64 = copy.deepcopy(self.model).double()
        return self._model64

    def run(self, batch, mode, gradients=False, relu_masks=None, amp="off", float64=False,
            assigned_gt_inds=None):
        """One loss evaluation: probes, loss totals (+ gradients by name and the input of
        every ReLU call, in call order) in precision `amp` (gfocal/precision.py; fp16's
        gradients through the loss scale, as training takes them); `relu_masks`: see
        parity_tests/kinks.py; `float64`: on the float64 twin (batch already float64);
        `assigned_gt_inds`: per image, the ATSS assignment to take instead of its own (gt
        index + 1 per anchor of all levels, as the probe targets.assigned_gt_inds holds it:
        the other side of ATSS ties, parity_tests/ties.py)."""
        port = self.port
        model = self.model64() if float64 else self.model
        model.train() if mode == "train" else model.eval()
        scale = INIT_SCALE if uses_loss_scale(amp) else 1.0
        with port.on_device(self.device), port.precision.mixed_precision(amp, self.device), \
                assignment(port, model.loss_fn.assigner, assigned_gt_inds):
            with port.probes.capture() as probes, \
                    port.probes.relu_calls(model, relu_masks) as relus:
                losses = model.loss(batch)
            out = {"probes": dict(probes),
                   "losses": {k: port.numpy(v) for k, v in losses.items()}}
            if gradients:
                scaled = port.train.gradients_numpy(model, losses["loss"] * scale)
                out["grads"] = {n: g / np.float32(scale) for n, g in scaled.items()}
                out["relu_inputs"] = [(name, port.numpy(x)) for name, x in relus]
        return out

    def forward_probes(self, imgs, float64=False):
        """The forward probes of the model on `imgs` alone (train mode)."""
        model = self.model64() if float64 else self.model
        model.train()
        with self.port.on_device(self.device), self.port.probes.capture() as probes:
            model(self.port.tensor(imgs))
        return dict(probes)

    def predict(self, batch):
        self.model.eval()
        with self.port.on_device(self.device):
            return self.model.predict(batch)

    def sgd_steps(self, batch, optim_cfg, steps, start=0):
        """`steps` SGD steps on `batch` from schedule iteration `start`."""
        port = self.port
        self.model.train()
        out = []
        with port.on_device(self.device):
            optimizer = port.train.build_optimizer(self.model, optim_cfg)
            for it in range(start, start + steps):
                port.train.set_lr(optimizer, learning_rate(optim_cfg, it, 0))
                port.train.train_step(self.model, optimizer, batch)
                snap = {f"param.{k}": v for k, v in
                        port.checkpoint.state_dict_numpy(self.model).items()}
                snap.update({f"momentum.{k}": v for k, v in
                             port.checkpoint.optimizer_state_numpy(self.model, optimizer).items()})
                snap["lr"] = optimizer_value(optimizer, "lr")
                out.append(snap)
        return out

    def recipe(self, optim_cfg, iterations, batch_size):
        """What the port's optimizer holds at each iteration once the shared schedule has
        set it (gfocal/engine.py sets the lr from gfocal/schedule.py every iteration)."""
        self.model.train()  # Jittor's eval() stops every parameter's gradient
        optimizer = self.port.train.build_optimizer(self.model, optim_cfg)
        out = {}
        for it, epoch in iterations:
            self.port.train.set_lr(optimizer, learning_rate(optim_cfg, it, epoch))
            out[(it, epoch)] = {key: optimizer_value(optimizer, key)
                                for key in ("lr", "momentum", "weight_decay")}
            out[(it, epoch)]["batch_size"] = batch_size
        return out


@contextlib.contextmanager
def assignment(port, assigner, per_image):
    """For the block, `assigner` (a port's ATSSAssigner) gives each image the gt indices of
    `per_image` (numpy, per anchor of all levels) and their labels instead of its own
    choice; its IoUs and everything after the assignment stay its own. None: unchanged."""
    if per_image is None:
        yield
        return
    get_targets, assign = assigner.get_targets, assigner.assign
    pending = []  # per image, in the order assign sees them: the override on valid anchors

    def wanted_get_targets(anchors_per_level, valid_flags_per_image, *args, **kwargs):
        if len(valid_flags_per_image) != len(per_image):
            raise ValueError(f"{len(per_image)} images of assigned_gt_inds for "
                             f"{len(valid_flags_per_image)} images")
        for flags, inds in zip(valid_flags_per_image, per_image):
            valid = np.concatenate([port.numpy(f) for f in flags]).astype(bool)
            pending.append(np.asarray(inds, np.int64)[valid])
        return get_targets(anchors_per_level, valid_flags_per_image, *args, **kwargs)

    def wanted_assign(anchors, num_level_anchors, gt_bboxes, gt_labels):
        _, max_overlaps, _ = assign(anchors, num_level_anchors, gt_bboxes, gt_labels)
        inds = pending.pop(0)
        gt_labels = port.numpy(gt_labels).reshape(-1).astype(np.int64)
        labels = np.full(len(inds), -1, np.int64)
        labels[inds > 0] = gt_labels[inds[inds > 0] - 1]
        return port.tensor(inds), max_overlaps, port.tensor(labels)

    assigner.get_targets, assigner.assign = wanted_get_targets, wanted_assign
    try:
        yield
    finally:  # the instance attributes go: the class's methods are back
        del assigner.get_targets, assigner.assign


def optimizer_value(optimizer, key):
    """A hyper-parameter of the (single) parameter group: PyTorch keeps them in
    param_groups, Jittor's SGD on the optimizer itself unless a group sets it."""
    group = optimizer.param_groups[0]
    return float(group[key] if key in group else getattr(optimizer, key))
