"""What the two outsiders share: their weight names, where their probes come from (module
paths and methods, through parity_tests/hook_probes.py only), their planted bugs and the
subject adapter. A framework file (torch_gfl.py, jittor_gfl.py) gives the model and the few
framework calls; nothing here reaches into the suite or the ports' probes."""
import functools
import types

import numpy as np

from parity_tests.hook_probes import HookProbes
from parity_tests.subject import Subject, SubjectError, assign_weights

# Own weight-name prefix -> canonical prefix: the outsiders call their parts otherwise.
PREFIXES = {"body.": "backbone.", "pyramid.": "neck.", "dense_head.": "bbox_head."}
NUM_INPUT_LEVELS = 3  # the pyramid's inputs C3..C5: one lateral each


def key_map(own_names):
    """{own weight name: canonical name}."""
    out = {}
    for own in own_names:
        prefix = next((p for p in PREFIXES if own.startswith(p)), "")
        out[own] = PREFIXES.get(prefix, "") + own[len(prefix):]
    return out


def module_probes(model_cfg):
    """{module path: canonical probe name} of the probes that are module outputs ("{call}":
    the head's modules run once per pyramid level)."""
    last = model_cfg["stacked_convs"] - 1  # the tower's output is its last block's
    paths = {"body.maxpool": "backbone.stem"}
    paths.update({f"body.layer{i}": f"backbone.layer{i}" for i in range(1, 5)})
    paths.update({f"pyramid.lateral_convs.{i}": f"neck.lateral.{i}"
                   for i in range(NUM_INPUT_LEVELS)})
    paths.update({f"pyramid.fpn_convs.{i}": f"neck.p{i + 3}"
                   for i in range(model_cfg["num_outs"])})
    paths.update({f"dense_head.cls_convs.{last}": "head.cls_tower.{call}",
                   f"dense_head.reg_convs.{last}": "head.reg_tower.{call}",
                   "dense_head.reg_conf": "head.quality.{call}"})
    paths.update({f"dense_head.scales.{level}": f"head.reg_logits.{level}"
                   for level in range(len(model_cfg["strides"]))})
    return paths


class ModuleNames:
    """A copy of a module's names as attributes (hashable, unlike a SimpleNamespace: a
    HookProbes method owner)."""


def private_globals(obj, name):
    """From now on `obj.<name>` runs its class's code with its own copy of that code's module
    names, returned as a namespace: replacing one of them (a planted bug, a probe's wrapper)
    changes what this object calls and nothing else (the reused port stays untouched)."""
    function = getattr(type(obj), name)
    names = ModuleNames()
    vars(names).update(function.__globals__)
    own = types.FunctionType(function.__code__, vars(names), function.__name__,
                             function.__defaults__, function.__closure__)
    setattr(obj, name, types.MethodType(own, obj))
    return names


class LevelProbes:
    """The probes that are not module outputs: method return values named by pyramid level,
    and the ones the loss forms from them (its per-level terms over the average factor, the
    weight targets: the positives' top class score). `reset` before each capture."""

    def __init__(self, num_classes, to_numpy):
        self.num_classes = num_classes
        self.to_numpy = to_numpy
        self.reset(0)

    def reset(self, num_imgs):
        self.num_imgs = num_imgs
        self.cls_scores, self.level_labels, self.terms = [], [], []
        self.integrals = 0
        self.pending_score = None

    def cls_score(self, out):  # the head's forward_single -> (cls_score, bbox_pred)
        level = len(self.cls_scores)
        self.cls_scores.append(self.to_numpy(out[0]))
        return {f"head.cls_score.{level}": out[0]}

    def integral(self, out):  # (images * locations, 4) in the loss
        level, self.integrals = self.integrals, self.integrals + 1
        return {f"head.integral.{level}": out.reshape(self.num_imgs, -1, 4)}

    def targets(self, out):  # the assigner's get_targets: per-level lists, stacked images
        self.level_labels = [self.to_numpy(t) for t in out["labels"]]
        joined = {key: np.concatenate([self.to_numpy(t) for t in out[key]], axis=1)
                  for key in ("labels", "label_weights", "bbox_targets")}
        return {"targets.labels": joined["labels"],
                "targets.label_weights": joined["label_weights"],
                "targets.bbox_targets": joined["bbox_targets"],
                "targets.assigned_gt_inds": out["assigned_gt_inds"],
                "targets.num_pos": np.asarray(out["num_total_pos"], np.int64)}

    def score(self, out):  # the loss's unmap: the positives' IoU put back in place
        self.pending_score = self.to_numpy(out)
        return {}

    def level_done(self, out):  # loss_single -> loss_cls, loss_bbox, loss_dfl, weight sum
        level = len(self.terms)
        self.terms.append([self.to_numpy(t) for t in out[:3]] + [out[3]])
        labels = self.level_labels[level].reshape(-1)
        score, self.pending_score = self.pending_score, None
        if score is None:  # a level without positives: no unmap call
            score = np.zeros(labels.shape, np.float32)
        cls = self.cls_scores[level]
        top = cls.transpose(0, 2, 3, 1).reshape(-1, self.num_classes).max(axis=1)
        positive = (labels >= 0) & (labels < self.num_classes)
        return {f"loss.score.{level}": score, f"loss.weight_targets.{level}": top[positive]}

    def finish(self, found):
        """`found` with the average factor and the per-level loss terms appended."""
        avg_factor = float(sum(term[3] for term in self.terms))
        out = dict(found)
        out["loss.avg_factor"] = np.asarray(avg_factor, np.float64)
        divisor = np.float32(avg_factor if avg_factor > 0 else 1.0)
        for level, (loss_cls, loss_bbox, loss_dfl, _) in enumerate(self.terms):
            out[f"loss.loss_cls.{level}"] = loss_cls
            out[f"loss.loss_bbox.{level}"] = loss_bbox / divisor
            out[f"loss.loss_dfl.{level}"] = loss_dfl / divisor
        return out


def method_probes(model, level, kit):
    """{(owner, method): probe name or function of its return value}."""
    head, loss = model.dense_head, model.criterion
    return {(head, "dgqp_features"): "head.dgqp_feat.{call}",
            (head, "forward_single"): level.cls_score,
            (head.integral, kit.CALL): level.integral,
            (loss.assigner, "get_targets"): level.targets,
            (loss.ops, "unmap"): level.score,
            (loss, "loss_single"): level.level_done}


# ---------------------------------------------------------------- planted bugs
# name -> (the one change, what a porter got wrong); each applied to a fresh model.
def _anchors_half_stride(model, kit):
    anchors = kit.HalfStrideAnchors(model.criterion.strides,
                                    model.criterion.anchor_generator.octave_base_scale)
    model.criterion.anchor_generator = model.decoder.anchor_generator = anchors


def _integral_softmax_axis(model, kit):
    model.dense_head.integral = kit.SidesSoftmaxIntegral(model.dense_head.reg_max)


def _gn_eps(model, kit):
    for module in model.dense_head.modules():
        if isinstance(module, kit.GroupNorm):
            module.eps = 1e-3


def _giou_no_eps(model, kit):
    model.criterion.ops.giou_loss = functools.partial(model.criterion.ops.giou_loss, eps=0.0)


def _loss_bbox_doubled(model, kit):
    model.criterion.loss_bbox_weight *= 2


def _targets_yx(model, kit):
    model.criterion.assigner = kit.YXTargetsAssigner(model.criterion.assigner.topk)


def _dfl_weights_swapped(model, kit):
    model.criterion.ops.distribution_focal_loss = kit.dfl_weights_swapped


def _atss_ties_last(model, kit):
    """Not a bug: ATSS with the other legitimate tie rule (mmdetection's topk may take it)."""
    names = private_globals(model.criterion.assigner, "assign")
    ascending_first = names.stable_argsort

    def larger_index_first(x, descending=False):
        # the descending order (equal keys by ascending index) reversed: ascending keys,
        # equal keys by descending index
        order = kit.to_numpy(ascending_first(x, descending=not descending))[::-1]
        return kit.as_tensor(order.copy())  # a copy: no negative strides left
    names.stable_argsort = larger_index_first


BUGS = {
    "anchors_half_stride": (_anchors_half_stride, "anchor centres at (x + 0.5) * stride"),
    "integral_softmax_axis": (_integral_softmax_axis,
                              "the integral's softmax over the 4 sides, not the bins"),
    "gn_eps": (_gn_eps, "the head's GroupNorm eps 1e-3 instead of 1e-5"),
    "giou_no_eps": (_giou_no_eps, "GIoU without its eps (union and hull unclamped)"),
    "loss_bbox_doubled": (_loss_bbox_doubled, "loss_bbox weight doubled"),
    "targets_yx": (_targets_yx, "box targets in (y1, x1, y2, x2) order"),
    "dfl_weights_swapped": (_dfl_weights_swapped,
                            "DFL's left and right bin weights swapped"),
    # a variant, not a bug: the suite must take its side (parity_tests/ties.py)
    "atss_ties_last": (_atss_ties_last,
                       "ATSS candidates at the k-th distance taken larger anchor index first"),
}


# ---------------------------------------------------------------- the subject
class OutsiderSubject(Subject):
    """An outsider's model (framework file `kit`) with planted bug `bug` (a BUGS name or
    None), judged through its own names: weights by key map, probes by hooks."""
    head = "gfl_v2"
    offers = frozenset({"probes", "losses", "gradients", "predict"})

    def __init__(self, kit, bug=None):
        if bug is not None and bug not in BUGS:
            raise SubjectError(f"outsider-{kit.FRAMEWORK}: unknown bug {bug!r} (known: "
                               f"{', '.join(BUGS)})")
        self.kit, self.bug = kit, bug
        self.name = f"outsider-{kit.FRAMEWORK}" + (f"+{bug}" if bug else "")
        self.model = None

    def build(self, model_cfg, state):
        model = self.kit.Detector(model_cfg)
        if self.bug:
            BUGS[self.bug][0](model, self.kit)
        own_names = self.kit.own_weight_names(model)
        self.key_map = key_map(own_names)
        self.kit.load_weights(model, assign_weights(own_names, state, self.key_map, self.name))
        self.level = LevelProbes(model_cfg["num_classes"], self.kit.to_numpy)
        self.hooks = HookProbes(model, self.kit.to_numpy, module_probes(model_cfg),
                                method_probes(model, self.level, self.kit))
        self.model = model

    def run(self, batch, mode, gradients=False):
        self.model.train() if mode == "train" else self.model.eval()
        self.level.reset(len(batch["imgs"]))
        with self.hooks.capture() as found:
            losses = self.model.loss(batch)
        out = {"probes": self.level.finish(found),
               "losses": {k: self.kit.to_numpy(v) for k, v in losses.items()}}
        if gradients:
            grads = self.kit.gradients(self.model, losses["loss"])
            out["grads"] = {self.key_map[name]: g for name, g in grads.items()}
        return out

    def predict(self, batch):
        self.model.eval()
        return self.model.predict(batch)
