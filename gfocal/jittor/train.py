"""The framework-specific part of training: optimizer, learning rate, one step."""
import jittor as jt

from . import gradients, named_trainable_parameters, trainable_parameters


def build_optimizer(model, optim_cfg):
    """SGD over the trainable parameters (frozen stages excluded), weight decay on all."""
    return jt.optim.SGD(trainable_parameters(model), lr=optim_cfg["lr"],
                        momentum=optim_cfg["momentum"], weight_decay=optim_cfg["weight_decay"])


def set_lr(optimizer, lr):
    optimizer.lr = lr
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_step(model, optimizer, batch, scaler=None):
    """Loss, backward, SGD update; returns the losses as floats. With a loss scaler (fp16,
    precision.loss_scaler) the backward pass is scaled and an overflowing step skipped."""
    losses = model.loss(batch)
    if scaler is None:
        optimizer.step(losses["loss"])
    else:
        scaler.step(losses["loss"], optimizer)
    # One sync of the whole model state and the momentum, so that every step starts from
    # stored values as a resumed run does. Left lazy, this step's backward and update ran
    # inside the next step's first graph (or the checkpoint's one-Var-at-a-time reads), and
    # the frozen BatchNorms' weights and every running statistic stayed pending constant
    # initialisers fused into each forward: kernels fused differently round differently
    # (-Ofast), and a run resumed from `latest` went 1 ulp off the straight one
    # (tests/test_seed.py, docs/MODEL.md section 10).
    detector = getattr(model, "module", model)  # distributed.DataParallel holds it
    jt.sync(list(detector.state_dict().values())
            + [v for group in optimizer.param_groups for v in group.get("values", ())])
    return {k: float(v.item()) for k, v in losses.items()}


def gradients_numpy(model, loss):
    """d loss / d parameter for every trainable parameter, by name (no update)."""
    named = named_trainable_parameters(model)
    grads = gradients(loss, [p for _, p in named])
    return {n: g.numpy() for (n, _), g in zip(named, grads)}
