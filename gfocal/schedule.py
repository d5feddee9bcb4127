"""Learning rate of the 1x recipe (docs/MODEL.md section 8), shared by both training loops."""


def learning_rate(optim_cfg, iteration, epoch):
    """lr at 0-based global `iteration` in 0-based `epoch`.

    Linear warmup over `warmup_iters` from `warmup_ratio`, and a decay by `gamma` after each
    epoch in `steps` (epochs counted from 1, as in the config). `warmup_style` "mmcv" (mmcv
    1.x's LrUpdaterHook, the official GFocalV2) reaches the full lr at iteration warmup_iters;
    "mmengine" (its LinearLR with end = warmup_iters, mmdetection 3.x) one iteration earlier,
    its span being end - begin - 1.
    """
    lr = optim_cfg["lr"] * optim_cfg["gamma"] ** sum(epoch >= s for s in optim_cfg["steps"])
    warmup, ratio = optim_cfg["warmup_iters"], optim_cfg["warmup_ratio"]
    if optim_cfg.get("warmup_style", "mmcv") == "mmengine":
        span = warmup - 1
        if iteration < span:
            lr *= ratio + (1 - ratio) * iteration / span
        elif iteration == 0 and span == 0:  # a one-iteration warmup: its start factor
            lr *= ratio
        return lr
    if iteration < warmup:
        lr *= 1 - (1 - iteration / warmup) * (1 - ratio)
    return lr
