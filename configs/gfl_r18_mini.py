# CPU preset for the bundled mini COCO (6 shape classes): ResNet-18 from random weights,
# 256 px input, 8 short epochs. Same model code and recipe as the paper config; only sizes
# and schedule differ. Measured: PyTorch port AP 0.425 after 8 epochs (~5 min, 2 cores).
model = dict(depth=18, num_classes=6, feat_channels=128, fpn_channels=128, stacked_convs=2,
             gn_groups=32)
data = dict(root="", img_scale=[256, 256], batch_size=4)
optim = dict(lr=0.01, momentum=0.9, weight_decay=1e-4, warmup_iters=50, warmup_ratio=0.001,
             steps=[6], epochs=8)
