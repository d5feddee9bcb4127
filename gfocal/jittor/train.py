"""The framework-specific part of training: optimizer, learning rate, one step."""
import jittor as jt


def build_optimizer(model, optim_cfg):
    """SGD over the trainable parameters (frozen stages excluded), weight decay on all."""
    params = [p for p in model.parameters() if not p.is_stop_grad()]
    return jt.optim.SGD(params, lr=optim_cfg["lr"], momentum=optim_cfg["momentum"],
                        weight_decay=optim_cfg["weight_decay"])


def set_lr(optimizer, lr):
    optimizer.lr = lr
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_step(model, optimizer, batch):
    """Loss, backward, SGD update; returns the losses as floats."""
    losses = model.loss(batch)
    optimizer.step(losses["loss"])
    return {k: float(v.item()) for k, v in losses.items()}


def gradients_numpy(model, loss):
    """d loss / d parameter for every trainable parameter, by name (no update)."""
    named = [(n, p) for n, p in model.named_parameters() if not p.is_stop_grad()]
    grads = jt.grad(loss, [p for _, p in named])
    return {n: g.numpy() for (n, _), g in zip(named, grads)}
