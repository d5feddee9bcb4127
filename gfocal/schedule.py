"""Learning rate of the 1x recipe (docs/MODEL.md section 8), shared by both training loops."""


def learning_rate(optim_cfg, iteration, epoch):
    """lr at 0-based global `iteration` in 0-based `epoch`.

    Linear warmup over `warmup_iters` from `warmup_ratio` (mmcv's formula), and a decay by
    `gamma` after each epoch in `steps` (epochs counted from 1, as in the config).
    """
    lr = optim_cfg["lr"] * optim_cfg["gamma"] ** sum(epoch >= s for s in optim_cfg["steps"])
    warmup = optim_cfg["warmup_iters"]
    if iteration < warmup:
        lr *= 1 - (1 - iteration / warmup) * (1 - optim_cfg["warmup_ratio"])
    return lr
