"""The framework-specific part of training: optimizer, learning rate, one step."""
import torch


def build_optimizer(model, optim_cfg):
    """SGD over the trainable parameters (frozen stages excluded), weight decay on all."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=optim_cfg["lr"], momentum=optim_cfg["momentum"],
                           weight_decay=optim_cfg["weight_decay"])


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_step(model, optimizer, batch):
    """Loss, backward, SGD update; returns the losses as floats."""
    losses = model.loss(batch)
    optimizer.zero_grad()
    losses["loss"].backward()
    optimizer.step()
    return {k: float(v.detach()) for k, v in losses.items()}


def gradients_numpy(model, loss):
    """d loss / d parameter for every trainable parameter, by name (no update)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return {n: (torch.zeros_like(p) if g is None else g).detach().cpu().numpy()
            for (n, p), g in zip(named, grads)}
