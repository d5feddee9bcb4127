"""The subject interface: what an implementation under test offers the parity suite.

A subject is any object with the members below (subclassing `Subject` is a convenience, not
a requirement); `pytest parity_tests --subject pkg.module:factory` calls `factory()` and
judges what it returns against the reference (docs/SUBJECTS.md). Everything crosses the
boundary as numpy arrays under the canonical names of docs/ARCHITECTURE.md (probes) and of
the canonical state dict (weights, gradients), so the suite never reaches into a subject.

    name       str shown in the verdict, e.g. "mmdet-3.3.0"
    head       "gfl_v2" or "gfl_v1": the model it implements (all subjects of a session agree)
    offers     a set of OFFERS keys; a check needing one it lacks reads "not offered"
    build(model_cfg, state)
               make its model from `model_cfg` (gfocal/config.py's `model` section) with the
               canonical weights `state` {canonical name: float32 array}; raise
               UnassignedWeights when a weight of its own is left without a value
    run(batch, mode, gradients)
               one loss evaluation of a pipeline-format batch (gfocal/data/loader.py) in
               "train" or "eval" mode -> {"probes": {canonical probe: array},
               "losses": {"loss_cls", "loss_bbox", "loss_dfl", "loss": array},
               "grads": {canonical parameter: array}}  (grads only when `gradients`)
    sgd_steps(batch, optim_cfg, steps, start)
               `steps` SGD steps on one batch with gfocal/config.py's `optim` section, from
               schedule iteration `start` -> per step {"param.NAME", "momentum.NAME": array,
               "lr": float} (the suite rebuilds the subject afterwards)
    predict(batch)
               per image {"boxes" (K, 4) original-image x1y1x2y2, "scores" (K,), "labels" (K,)}
    recipe(optim_cfg, iterations, batch_size)
               what its own training loop applies at each (iteration, epoch) of `iterations`
               given that config and batch size -> {(iteration, epoch): {"lr", "momentum",
               "weight_decay", "batch_size"}}
"""
import importlib

import numpy as np

OFFERS = {
    "probes": "forward, target and loss probes by canonical name (run)",
    "losses": "the loss totals (run)",
    "gradients": "gradients by canonical parameter name (run with gradients=True)",
    "sgd": "SGD steps: parameters and momentum after each (sgd_steps)",
    "predict": "test-time detections (predict)",
    "recipe": "the learning rate, momentum, weight decay and batch size its own training "
              "loop applies (recipe)",
    "relu_inputs": "the input of every ReLU call in the reference's call order (run), so the "
                   "suite can take its side of a ReLU kink (parity_tests/kinks.py)",
    "port": "a gfocal port module (gfocal/ports.py INTERFACE): function-level parity checks",
    "float64": "runs in float64 (what a reference must offer: the live noise)",
    "amp": "the mixed-precision parity policy of gfocal/precision.py (run(..., amp=))",
}
HEADS = ("gfl_v2", "gfl_v1")
LOSS_NAMES = ("loss_cls", "loss_bbox", "loss_dfl", "loss")


class SubjectError(Exception):
    """A subject that cannot be loaded or built: one line naming it."""


class UnassignedWeights(SubjectError):
    """Weights of a subject left without a value by the canonical state and its key map."""


class NotOffered(SubjectError):
    """A check the subject does not offer (the verdict says so; never a pass)."""


class Subject:
    """Defaults for the members a subject may leave out."""
    name = "subject"
    head = "gfl_v2"
    offers = frozenset()

    def build(self, model_cfg, state):
        raise NotOffered(f"{self.name}: build")

    def run(self, batch, mode, gradients=False):
        raise NotOffered(f"{self.name}: run")

    def sgd_steps(self, batch, optim_cfg, steps, start=0):
        raise NotOffered(f"{self.name}: sgd")

    def predict(self, batch):
        raise NotOffered(f"{self.name}: predict")

    def recipe(self, optim_cfg, iterations, batch_size):
        raise NotOffered(f"{self.name}: recipe")


def offers(subject, what):
    return what in getattr(subject, "offers", ())


def assign_weights(own_names, state, key_map=None, subject="subject"):
    """{own name: array} for every name in `own_names`, taken from the canonical `state`
    through `key_map` {own name: canonical name} (names not in it map to themselves).
    UnassignedWeights names every own weight without a canonical value, and every canonical
    weight nobody took (a key map that drops weights must not pass silently)."""
    key_map = key_map or {}
    canonical = {own: key_map.get(own, own) for own in own_names}
    missing = sorted(own for own, name in canonical.items() if name not in state)
    unused = sorted(set(state) - set(canonical.values()))
    if missing or unused:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of its weights have no canonical value "
                         f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})")
        if unused:
            parts.append(f"{len(unused)} canonical weights are not used "
                         f"({', '.join(unused[:4])}{', ...' if len(unused) > 4 else ''})")
        raise UnassignedWeights(f"{subject}: " + "; ".join(parts))
    return {own: np.asarray(state[name]) for own, name in canonical.items()}


def load_subject(spec, builtins, option="--subject"):
    """The subject named by `spec` (given to `option`): a name of `builtins` {name: factory}
    or "pkg.module:factory"; SubjectError (one line) when it cannot be made."""
    if spec in builtins:
        factory = builtins[spec]
    else:
        module_name, sep, attr = spec.partition(":")
        if not sep or not module_name or not attr:
            raise SubjectError(f"{option} {spec!r}: expected one of {', '.join(builtins)} or "
                               f"pkg.module:factory")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # any import failure of someone else's module: one line
            raise SubjectError(f"{option} {spec!r}: cannot import {module_name} "
                               f"({type(exc).__name__}: {exc})") from exc
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise SubjectError(f"{option} {spec!r}: {module_name} has no callable {attr!r}")
    try:
        subject = factory()
    except Exception as exc:
        raise SubjectError(f"{option} {spec!r}: its factory raised "
                           f"{type(exc).__name__}: {exc}") from exc
    return check_subject(subject, spec, option)


def check_subject(subject, spec, option="--subject"):
    """The subject, or SubjectError when its declarations are unusable."""
    name = getattr(subject, "name", None)
    if not isinstance(name, str) or not name:
        raise SubjectError(f"{option} {spec!r}: the subject has no name")
    head = getattr(subject, "head", "gfl_v2")
    if head not in HEADS:
        raise SubjectError(f"{option} {spec!r}: head {head!r} is not one of {', '.join(HEADS)}")
    unknown = sorted(set(getattr(subject, "offers", ())) - set(OFFERS))
    if unknown:
        raise SubjectError(f"{option} {spec!r}: offers unknown {', '.join(unknown)} (known: "
                           f"{', '.join(OFFERS)})")
    for method in ("build", "run"):
        if not callable(getattr(subject, method, None)):
            raise SubjectError(f"{option} {spec!r}: the subject has no {method}()")
    return subject
