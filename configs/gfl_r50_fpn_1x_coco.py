# GFocalV2 R50-FPN 1x on COCO 2017: the paper recipe (docs/MODEL.md section 8).
# Point data.root at a COCO copy (annotations/, train2017/, val2017/).
model = dict(depth=50, num_classes=80)
data = dict(root="data/coco", img_scale=[1333, 800], batch_size=16)
optim = dict(lr=0.01, momentum=0.9, weight_decay=1e-4, warmup_iters=500, warmup_ratio=0.001,
             steps=[8, 11], epochs=12)
