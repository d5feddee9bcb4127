# scripts/gpu.py check --dry-run: the smallest training of the bundled data that still runs
# every step (a tiny ResNet-18 detector at 96 px, two iterations, then evaluation).
# A plain config (configs import no test code); tests/test_factories.py holds it equal to
# tests/factories.py's tiny_sections.
model = dict(depth=18, num_classes=6, feat_channels=32, fpn_channels=32, stacked_convs=1,
             gn_groups=8)
data = dict(root="", img_scale=[96, 96], batch_size=2)
optim = dict(warmup_iters=5, epochs=1)
train = dict(eval_interval=0)
