"""Weight conversion between the two ports, and from mmdetection and torchvision."""
