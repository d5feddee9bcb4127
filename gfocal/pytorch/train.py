"""The framework-specific part of training: optimizer, learning rate, one step."""
import torch

from . import gradients, named_trainable_parameters, trainable_parameters


def build_optimizer(model, optim_cfg):
    """SGD over the trainable parameters (frozen stages excluded), weight decay on all."""
    return torch.optim.SGD(trainable_parameters(model), lr=optim_cfg["lr"],
                           momentum=optim_cfg["momentum"], weight_decay=optim_cfg["weight_decay"])


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_step(model, optimizer, batch, scaler=None):
    """Loss, backward, SGD update; returns the losses as floats. With a loss scaler (fp16,
    precision.loss_scaler) the backward pass is scaled and an overflowing step skipped."""
    losses = model.loss(batch)
    optimizer.zero_grad()
    if scaler is None:
        losses["loss"].backward()
        optimizer.step()
    else:
        scaler.step(losses["loss"], optimizer)
    return {k: float(v.detach()) for k, v in losses.items()}


def gradients_numpy(model, loss):
    """d loss / d parameter for every trainable parameter, by name (no update)."""
    named = named_trainable_parameters(model)
    grads = gradients(loss, [p for _, p in named])
    return {n: (torch.zeros_like(p) if g is None else g).detach().cpu().numpy()
            for (n, p), g in zip(named, grads)}
