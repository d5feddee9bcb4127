# GFL V1 R50-FPN 1x on COCO 2017 as mmdetection 3.x's configs/gfl/gfl_r50_fpn_1x_coco.py
# (mmdet 3.3.0; docs/MODEL.md section 15). Values left out are our defaults, which equal that
# config's; the three that differ from our defaults name their mmdetection line.
# Point data.root at a COCO copy (annotations/, train2017/, val2017/).
model = dict(
    depth=50, num_classes=80,
    head="gfl_v1",      # bbox_head=dict(type='GFLHead', ..., loss_cls=dict(
                        #     type='QualityFocalLoss', use_sigmoid=True, ...)): no DGQP
    min_bbox_size=0.0,  # test_cfg=dict(..., min_bbox_size=0, ...)
)
data = dict(root="data/coco", img_scale=[1333, 800], batch_size=16)
optim = dict(lr=0.01, momentum=0.9, weight_decay=1e-4, warmup_iters=500, warmup_ratio=0.001,
             # param_scheduler=[dict(type='LinearLR', start_factor=0.001, by_epoch=False,
             #     begin=0, end=500), ...] (configs/_base_/schedules/schedule_1x.py)
             warmup_style="mmengine",
             steps=[8, 11], epochs=12)
