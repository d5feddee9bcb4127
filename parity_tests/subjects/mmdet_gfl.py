"""mmdetection 3.x's GFL (V1) as a parity subject: mmdet's own `GFL` detector, built from the
paper config (configs/gfl/gfl_r50_fpn_1x_coco.py) with the sizes of the parity model and
observed only through forward hooks and method wrappers (nothing of mmdet is edited).

    pytest parity_tests --subject parity_tests.subjects.mmdet_gfl:subject

mmdet, mmengine and mmcv-lite live in an environment of their own (scripts/mmdet_env.sh,
made on first use). mmcv-lite lacks mmcv's compiled ops, so before mmdet is imported
`mmcv.ops` is a stand-in: the names in REPLACED_OPS are torchvision's NMS (the GFL path
calls batched_nms in its post-processing); every other name mmdet imports at load time is a
placeholder that raises when used (no such name is on the GFL path).

Its training side is mmdetection's own too: the paper config's optim_wrapper,
param_scheduler, train_cfg and train_dataloader with the numbers of our `optim` section,
built by mmengine (build_optim_wrapper, the PARAM_SCHEDULERS registry, the config's
ParamSchedulerHook) and advanced in the order of mmengine's EpochBasedTrainLoop.
"""
import contextlib
import importlib.abc
import importlib.util
import pathlib
import subprocess
import sys
import types

import numpy as np

from parity_tests.hook_probes import HookProbes, calls
from parity_tests.subject import Subject, SubjectError, assign_weights

REPLACED_OPS = ("batched_nms", "nms")
# mmdet's state-dict names are the canonical ones (mmdetection layout): nothing to rename.
KEY_MAP = {}
# BatchNorm's step counter is a buffer but no weight (frozen BN never reads it)
NOT_WEIGHTS = ("num_batches_tracked",)
ENV_SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "mmdet_env.sh"
ENV_TIMEOUT_S = 1800
# inside the installed mmdet package: its training schedule is read from there, not restated
PAPER_CONFIG = (".mim", "configs", "gfl", "gfl_r50_fpn_1x_coco.py")


def _drop_first_decay(cfg):
    _scheduler(cfg, "MultiStepLR").milestones.pop(0)


# One-line slips of a training recipe, for proving that the recipe check catches them
# (tests/test_mmdet_subject.py): each edits the mmengine config after our numbers are in.
RECIPE_BUGS = {
    "dropped_decay": _drop_first_decay,
    "warmup_ratio": lambda cfg: _scheduler(cfg, "LinearLR").update(start_factor=1 / 3),
    "batch_4": lambda cfg: cfg.train_dataloader.update(batch_size=4),
}


def subject(recipe_bug=None):
    _use_mmdet_env()
    if recipe_bug is not None and recipe_bug not in RECIPE_BUGS:
        raise SubjectError(f"recipe_bug {recipe_bug!r}: expected one of {', '.join(RECIPE_BUGS)}")
    return MmdetGFL(recipe_bug)


def _use_mmdet_env():
    """mmdet importable: where it is not, scripts/mmdet_env.sh's site-packages join sys.path
    (behind the shared frameworks, which that environment layers on)."""
    if importlib.util.find_spec("mmdet") is not None:
        return
    try:
        made = subprocess.run(["bash", str(ENV_SCRIPT)], capture_output=True, text=True,
                              timeout=ENV_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SubjectError(f"{ENV_SCRIPT} ran over {ENV_TIMEOUT_S}s") from None
    if made.returncode:
        last = (made.stderr.strip().splitlines() or ["no output"])[-1]
        raise SubjectError(f"{ENV_SCRIPT} failed: {last}")
    python = made.stdout.strip().splitlines()[-1]
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run([python, "-c", purelib],
                          capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    sys.path.append(site)


# ---------------------------------------------------------------- mmcv.ops stand-in
def nms(boxes, scores, iou_threshold, offset=0, score_threshold=0, max_num=-1):
    """mmcv.ops.nms's contract: (dets (K, 5) = boxes and score, kept indices by score)."""
    import torch
    import torchvision
    if offset != 0 or score_threshold != 0:
        raise NotImplementedError("mmcv.ops.nms stand-in: offset and score_threshold are 0 only")
    keep = torchvision.ops.nms(boxes, scores, float(iou_threshold))
    keep = keep[:max_num] if max_num > 0 else keep
    return torch.cat([boxes[keep], scores[keep, None]], dim=1), keep


def batched_nms(boxes, scores, idxs, nms_cfg, class_agnostic=False):
    """mmcv.ops.batched_nms's contract for nms_cfg type "nms": NMS per class `idxs` (all
    boxes together when class_agnostic) -> (dets (K, 5), kept indices by score)."""
    import torch
    import torchvision
    cfg = dict(nms_cfg)
    if cfg.pop("type", "nms") != "nms":
        raise NotImplementedError(f"mmcv.ops.batched_nms stand-in: type {nms_cfg['type']!r}")
    class_agnostic = cfg.pop("class_agnostic", class_agnostic)
    cfg.pop("split_thr", None)  # mmcv's per-class loop above it: the same boxes kept
    max_num = cfg.pop("max_num", -1)
    iou = float(cfg.pop("iou_threshold"))
    if cfg:
        raise NotImplementedError(f"mmcv.ops.batched_nms stand-in: options {sorted(cfg)}")
    keep = (torchvision.ops.nms(boxes, scores, iou) if class_agnostic
            else torchvision.ops.batched_nms(boxes, scores, idxs, iou))
    keep = keep[:max_num] if max_num > 0 else keep
    return torch.cat([boxes[keep], scores[keep, None]], dim=1), keep


def _placeholder(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def refuse(*args, **kwargs):
        raise NotImplementedError(f"mmcv.ops.{name}: a compiled op of mmcv, not in mmcv-lite "
                                  f"(the mmdet subject replaces only {', '.join(REPLACED_OPS)})")
    return type(name, (), {"__init__": refuse})  # a class: mmengine checks isinstance with some


class _OpsStandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports of mmcv.ops and of any of its submodules give a stand-in module."""

    def find_spec(self, fullname, path, target=None):
        if fullname == "mmcv.ops" or fullname.startswith("mmcv.ops."):
            return importlib.util.spec_from_loader(fullname, self,
                                                   is_package=fullname == "mmcv.ops")
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.nms, module.batched_nms = nms, batched_nms
        module.__getattr__ = _placeholder
        return module

    def exec_module(self, module):
        pass


def _install_ops_stand_in():
    if not any(isinstance(finder, _OpsStandIn) for finder in sys.meta_path):
        sys.meta_path.insert(0, _OpsStandIn())


# ---------------------------------------------------------------- the model
def gfl_config(m):
    """mmdet's gfl_r50_fpn_1x_coco model with the sizes of gfocal/config.py's `model` `m`."""
    stages = [64 * 2 ** i * (4 if m["depth"] >= 50 else 1) for i in range(4)]
    return dict(
        type="GFL",
        backbone=dict(type="ResNet", depth=m["depth"], num_stages=4, out_indices=(0, 1, 2, 3),
                      frozen_stages=m["frozen_stages"],
                      norm_cfg=dict(type="BN", requires_grad=True),
                      norm_eval=m["norm_eval"], style="pytorch"),
        neck=dict(type="FPN", in_channels=stages, out_channels=m["fpn_channels"], start_level=1,
                  add_extra_convs="on_output", num_outs=m["num_outs"]),
        bbox_head=dict(
            type="GFLHead", num_classes=m["num_classes"], in_channels=m["fpn_channels"],
            stacked_convs=m["stacked_convs"], feat_channels=m["feat_channels"],
            norm_cfg=dict(type="GN", num_groups=m["gn_groups"], requires_grad=True),
            anchor_generator=dict(type="AnchorGenerator", ratios=[1.0], scales_per_octave=1,
                                  octave_base_scale=m["octave_base_scale"], strides=m["strides"]),
            loss_cls=dict(type="QualityFocalLoss", use_sigmoid=True, beta=m["qfl_beta"],
                          loss_weight=m["loss_cls_weight"]),
            loss_dfl=dict(type="DistributionFocalLoss", loss_weight=m["loss_dfl_weight"]),
            reg_max=m["reg_max"],
            loss_bbox=dict(type="GIoULoss", loss_weight=m["loss_bbox_weight"])),
        train_cfg=dict(assigner=dict(type="ATSSAssigner", topk=m["atss_topk"]),
                       allowed_border=-1, pos_weight=-1, debug=False),
        test_cfg=dict(nms_pre=m["nms_pre"], min_bbox_size=m.get("min_bbox_size", 0),
                      score_thr=m["score_thr"],
                      nms=dict(type="nms", iou_threshold=m["iou_thr"]),
                      max_per_img=m["max_per_img"]))


def _numpy(tensor):
    return tensor.detach().cpu().numpy().copy()


class MmdetGFL(Subject):
    head = "gfl_v1"
    offers = frozenset({"probes", "losses", "gradients", "predict", "sgd", "recipe"})

    def __init__(self, recipe_bug=None):
        _install_ops_stand_in()
        import mmdet
        self.name = f"mmdet-{mmdet.__version__}" + (f"+{recipe_bug}" if recipe_bug else "")
        self.recipe_bug = recipe_bug
        self.model = None

    def build(self, model_cfg, state):
        import torch
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        from mmengine.config import ConfigDict
        register_all_modules(init_default_scope=True)
        self.model = MODELS.build(ConfigDict(gfl_config(model_cfg)))  # attribute access
        own = [k for k in self.model.state_dict() if not k.endswith(NOT_WEIGHTS)]
        weights = assign_weights(own, state, KEY_MAP, subject=self.name)
        missing = self.model.load_state_dict(
            {k: torch.from_numpy(np.array(v, np.float32)) for k, v in weights.items()},
            strict=False).missing_keys
        assert all(k.endswith(NOT_WEIGHTS) for k in missing), missing
        self.canonical = {own_name: KEY_MAP.get(own_name, own_name) for own_name in own}
        self.levels = len(model_cfg["strides"])
        self.probes = HookProbes(self.model, _numpy, modules=self._module_probes(model_cfg))

    def _module_probes(self, m):
        last = m["stacked_convs"] - 1
        modules = {"backbone.maxpool": "backbone.stem",
                   "bbox_head.cls_convs.%d" % last: "head.cls_tower.{call}",
                   "bbox_head.reg_convs.%d" % last: "head.reg_tower.{call}",
                   "bbox_head.gfl_cls": "head.cls_logits.{call}"}
        modules.update({f"backbone.layer{i}": f"backbone.layer{i}" for i in range(1, 5)})
        modules.update({f"neck.lateral_convs.{i}": f"neck.lateral.{i}" for i in range(3)})
        modules.update({f"neck.fpn_convs.{i}": f"neck.p{i + 3}" for i in range(m["num_outs"])})
        modules.update({f"bbox_head.scales.{i}": f"head.reg_logits.{i}"
                        for i in range(len(m["strides"]))})
        return modules

    # ------------------------------------------------------------ data
    def _inputs(self, batch):
        import torch
        from mmdet.structures import DetDataSample
        from mmengine.structures import InstanceData
        samples = []
        for boxes, labels, ignored, meta in zip(batch["gt_bboxes"], batch["gt_labels"],
                                                batch["gt_bboxes_ignore"], batch["img_metas"]):
            sample = DetDataSample(metainfo=dict(
                img_shape=tuple(meta["img_shape"][:2]), pad_shape=tuple(meta["pad_shape"][:2]),
                ori_shape=tuple(meta["ori_shape"][:2]),
                batch_input_shape=tuple(batch["imgs"].shape[2:]),
                # mmdet 3.x: (w, h); the pipeline's is (w, h, w, h)
                scale_factor=tuple(float(s) for s in np.asarray(meta["scale_factor"])[:2])))
            sample.gt_instances = InstanceData(
                bboxes=torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
                labels=torch.as_tensor(np.asarray(labels, np.int64)))
            sample.ignored_instances = InstanceData(
                bboxes=torch.as_tensor(np.asarray(ignored, np.float32).reshape(-1, 4)))
            samples.append(sample)
        return torch.as_tensor(np.asarray(batch["imgs"], np.float32)), samples

    # ------------------------------------------------------------ run
    def run(self, batch, mode, gradients=False):
        import torch
        from mmdet.models.dense_heads import gfl_head
        model, head = self.model, self.model.bbox_head
        model.train(mode == "train")
        model.zero_grad(set_to_none=True)
        imgs, samples = self._inputs(batch)
        log = []
        watched = [(head, "forward", "head"), (head, "get_targets", "targets"),
                   (gfl_head, "anchor_inside_flags", "inside"), (head.assigner, "assign", "assign"),
                   (head, "loss_by_feat_single", "level"), (head.loss_cls, "forward", "qfl"),
                   (head.loss_bbox, "forward", "giou"), (head, "loss_by_feat", "losses")]
        with contextlib.ExitStack() as stack:
            found = stack.enter_context(self.probes.capture())
            for owner, method, tag in watched:
                stack.enter_context(calls(owner, method, log, tag))
            losses = model.loss(imgs, samples)
            probes = dict(found)
        probes.update(_target_probes(log, head.num_classes))
        probes.update(_loss_probes(log))
        probes.update(self._integral_probes(log, samples))
        totals = {k: sum(v) for k, v in losses.items()}
        totals["loss"] = sum(totals.values())
        out = {"probes": probes, "losses": {k: _numpy(v) for k, v in totals.items()}}
        if gradients:
            totals["loss"].backward()
            out["grads"] = {self.canonical[n]: _numpy(torch.zeros_like(p) if p.grad is None
                                                      else p.grad)
                            for n, p in model.named_parameters() if p.requires_grad}
        return out

    def _integral_probes(self, log, samples):
        """head.integral.L (N, H*W, 4): mmdet's loss integrates only the positives, so its
        own prediction path (every anchor, image by image) is run on this run's outputs."""
        import torch
        cls_scores, bbox_preds = next(e[3] for e in log if e[0] == "head")
        calls = []
        hooks = HookProbes(self.model, _numpy, modules={
            "bbox_head.integral": lambda out: calls.append(_numpy(out)) or {}})
        with torch.no_grad(), hooks.capture():
            self.model.bbox_head.predict_by_feat(
                cls_scores, bbox_preds, batch_img_metas=[s.metainfo for s in samples],
                rescale=False)
        return {f"head.integral.{level}": np.stack(calls[level::self.levels])
                for level in range(self.levels)}

    # ------------------------------------------------------------ training
    def recipe(self, optim_cfg, iterations, batch_size):
        """What mmdet's optimizer holds at each (iteration, epoch): a fresh optim wrapper and
        schedulers advanced by `iteration` train iterations, then `epoch` epoch ends. The
        schedulers are chainable (each multiplies the current lr), so where inside the
        iterations an epoch ended changes the product only by rounding."""
        cfg = train_config(optim_cfg, batch_size, self.recipe_bug)
        out = {}
        for it, epoch in iterations:
            loop = _TrainLoop(self.model, cfg)
            loop.advance(it, epoch)
            out[(it, epoch)] = dict(loop.hyper_parameters(),
                                    batch_size=cfg.train_dataloader.batch_size)
        return out

    def sgd_steps(self, batch, optim_cfg, steps, start=0):
        """`steps` calls of mmengine's `train_step` (mmdet's loss summed by parse_losses,
        the optim wrapper's update_params) from schedule iteration `start` of epoch 0."""
        cfg = train_config(optim_cfg, len(batch["img_metas"]), self.recipe_bug)
        loop = _TrainLoop(self.model, cfg)
        loop.advance(start, 0)
        imgs, samples = self._inputs(batch)
        out = []
        for it in range(start, start + steps):
            lr = loop.hyper_parameters()["lr"]
            loop.train_iter(it, dict(inputs=imgs, data_samples=samples))
            snap = {f"param.{self.canonical[k]}": _numpy(v)
                    for k, v in self.model.state_dict().items() if k in self.canonical}
            state = loop.wrapper.optimizer.state
            snap.update({f"momentum.{self.canonical[n]}": _numpy(state[p]["momentum_buffer"])
                         for n, p in self.model.named_parameters()
                         if "momentum_buffer" in state.get(p, {})})
            snap["lr"] = lr
            out.append(snap)
        return out

    def predict(self, batch):
        import torch
        self.model.eval()
        imgs, samples = self._inputs(batch)
        with torch.no_grad():
            results = self.model.predict(imgs, samples, rescale=True)
        return [{"boxes": _numpy(r.pred_instances.bboxes),
                 "scores": _numpy(r.pred_instances.scores),
                 "labels": _numpy(r.pred_instances.labels)} for r in results]


def train_config(optim_cfg, batch_size, recipe_bug=None):
    """mmdet's paper config (its schedule_1x and default_runtime) with our `optim` section's
    numbers and `batch_size` images per iteration, types and structure left as mmdet has
    them; `recipe_bug`: a RECIPE_BUGS slip on top."""
    import mmdet
    from mmengine.config import Config
    path = pathlib.Path(mmdet.__file__).parent.joinpath(*PAPER_CONFIG)
    cfg = Config.fromfile(str(path))
    cfg.optim_wrapper.optimizer.update(lr=optim_cfg["lr"], momentum=optim_cfg["momentum"],
                                       weight_decay=optim_cfg["weight_decay"])
    warmup, decay = _scheduler(cfg, "LinearLR"), _scheduler(cfg, "MultiStepLR")
    warmup.update(start_factor=optim_cfg["warmup_ratio"], end=optim_cfg["warmup_iters"])
    if optim_cfg["warmup_iters"] == 0:  # mmengine refuses end <= begin: no warmup at all
        cfg.param_scheduler.remove(warmup)
    decay.update(milestones=list(optim_cfg["steps"]), gamma=optim_cfg["gamma"],
                 end=optim_cfg["epochs"])
    cfg.train_cfg.max_epochs = optim_cfg["epochs"]
    cfg.train_dataloader.batch_size = batch_size
    if cfg.auto_scale_lr.enable:  # it would rescale lr by the batch: not in the paper config
        raise SubjectError(f"{path}: auto_scale_lr is enabled; the subject does not apply it")
    if recipe_bug:
        RECIPE_BUGS[recipe_bug](cfg)
    return cfg


def _scheduler(cfg, kind):
    found = [s for s in cfg.param_scheduler if s.type == kind]
    if len(found) != 1 or found[0].get("convert_to_iter_based"):
        raise SubjectError(f"mmdet's paper config: expected one {kind} (not converted to "
                           f"iterations), found {cfg.param_scheduler}")
    return found[0]


class _TrainLoop:
    """mmdet's optim wrapper and param schedulers on `model`, built as mmengine's Runner
    builds them and stepped by the config's own ParamSchedulerHook in the order of
    EpochBasedTrainLoop: each iteration's optimizer step, then after_train_iter (the
    iteration-based schedulers); at an epoch's end after_train_epoch (the epoch-based)."""

    def __init__(self, model, cfg):
        from mmengine.optim import build_optim_wrapper
        from mmengine.registry import HOOKS, PARAM_SCHEDULERS
        self.model = model
        self.wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        # the hook reads only the runner's param_schedulers
        self.runner = types.SimpleNamespace(param_schedulers=[
            PARAM_SCHEDULERS.build(c, default_args=dict(optimizer=self.wrapper))
            for c in cfg.param_scheduler])
        self.hook = HOOKS.build(cfg.default_hooks.param_scheduler)

    def advance(self, iterations, epochs):
        """`iterations` iterations without gradients (the optimizer step moves nothing),
        then `epochs` epoch ends."""
        self.wrapper.zero_grad()
        for it in range(iterations):
            self.wrapper.step()
            self.hook.after_train_iter(self.runner, it)
        for _ in range(epochs):
            self.hook.after_train_epoch(self.runner)

    def train_iter(self, idx, data):
        """EpochBasedTrainLoop.run_iter's two steps that touch the weights and schedule."""
        self.model.train()
        self.model.train_step(data, optim_wrapper=self.wrapper)
        self.hook.after_train_iter(self.runner, idx)

    def hyper_parameters(self):
        """lr, momentum and weight decay of the optimizer (one value: every group's)."""
        groups = self.wrapper.optimizer.param_groups
        out = {key: float(groups[0][key]) for key in ("lr", "momentum", "weight_decay")}
        if any(float(g[k]) != v for g in groups for k, v in out.items()):
            raise SubjectError(f"mmdet's optimizer has parameter groups with different "
                               f"hyper-parameters: {[{k: g[k] for k in out} for g in groups]}")
        return out


def _target_probes(log, num_classes):
    """targets.*: mmdet's per-level targets concatenated over the levels; the assigned gt
    index per anchor put back on the image's anchors (0 outside its valid ones)."""
    import torch
    _, labels, label_weights, bbox_targets, _, num_pos = next(e[3] for e in log
                                                              if e[0] == "targets")
    inside = [e[3] for e in log if e[0] == "inside"]
    assigned = [e[3].gt_inds for e in log if e[0] == "assign"]
    gt_inds = torch.zeros(len(inside), inside[0].numel(), dtype=torch.int64)
    for img, (flags, inds) in enumerate(zip(inside, assigned)):
        gt_inds[img, flags] = inds
    return {"targets.labels": _numpy(torch.cat(labels, 1)),
            "targets.label_weights": _numpy(torch.cat(label_weights, 1)),
            "targets.bbox_targets": _numpy(torch.cat(bbox_targets, 1)),
            "targets.assigned_gt_inds": _numpy(gt_inds),
            "targets.num_pos": np.asarray(int(num_pos), np.int64)}


def _loss_probes(log):
    """loss.* per level, from the calls inside each loss_by_feat_single (one QFL call, and a
    GIoU call only on a level with positives); loss.avg_factor is mmdet's normaliser of the
    box terms: the levels' weight sums, clamped at 1 (gfl_head.py, loss_by_feat)."""
    probes, level, weight_sum = {}, -1, 0.0
    for tag, args, kwargs, result in log:
        if tag == "level":
            level += 1
            weight_sum += float(result[3])
            probes[f"loss.weight_targets.{level}"] = np.zeros(0, np.float32)
        elif tag == "qfl":
            probes[f"loss.score.{level}"] = _numpy(args[1][1])
        elif tag == "giou":
            probes[f"loss.weight_targets.{level}"] = _numpy(kwargs["weight"])
        elif tag == "losses":
            for name, values in result.items():
                probes.update({f"loss.{name}.{i}": _numpy(v) for i, v in enumerate(values)})
    probes["loss.avg_factor"] = np.asarray(max(weight_sum, 1.0), np.float64)
    return probes
