"""ResNet backbone, mmdetection "pytorch" style (docs/MODEL.md section 1)."""
import jittor as jt
from jittor import nn

from .kernels import BatchNorm2d, Conv2d, MaxPool2d, ReLU
from .probes import record


class BasicBlock(nn.Module):
    """3x3 -> 3x3 residual block (ResNet-18/34)."""
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = BatchNorm2d(planes)
        self.conv2 = Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = BatchNorm2d(planes)
        self.relu = ReLU()
        self.downsample = downsample

    def execute(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride) -> 1x1 residual block (ResNet-50/101)."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = BatchNorm2d(planes)
        self.conv2 = Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = BatchNorm2d(planes)
        self.conv3 = Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = BatchNorm2d(planes * self.expansion)
        self.relu = ReLU()
        self.downsample = downsample

    def execute(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def eval_mode(module):
    """Module and descendants to eval mode; Jittor's Module.eval() would also stop_grad
    every parameter (BN affine parameters of unfrozen stages must keep training)."""
    for m in module.modules():
        m.is_train = False


ARCH_SETTINGS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


def make_layer(block, inplanes, planes, num_blocks, stride):
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            Conv2d(inplanes, planes * block.expansion, 1, stride=stride, bias=False),
            BatchNorm2d(planes * block.expansion))
    blocks = [block(inplanes, planes, stride, downsample)]
    for _ in range(1, num_blocks):
        blocks.append(block(planes * block.expansion, planes))
    return nn.Sequential(*blocks)


class ResNet(nn.Module):
    """Returns the stages in `out_indices` (0 = layer1/C2 ... 3 = layer4/C5).

    frozen_stages: -1 = nothing frozen, 0 = stem, k >= 1 = stem and layer1..layerk; frozen
    parameters are stop_grad Vars and their modules stay in eval mode. Jittor's optimizers
    skip stop_grad parameters (no update, no weight decay), jt.grad does not backpropagate
    into them (it returns zeros if asked), and assigning new values keeps them frozen.
    norm_eval: every BatchNorm stays in eval mode (running statistics fixed) even in train().
    """

    def __init__(self, depth, frozen_stages=1, norm_eval=True, out_indices=(1, 2, 3)):
        super().__init__()
        if depth not in ARCH_SETTINGS:
            raise ValueError(f"ResNet depth {depth!r} is not supported "
                             f"(choose from {sorted(ARCH_SETTINGS)})")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages = {frozen_stages!r} (must be in -1..4)")
        out_indices = tuple(out_indices)
        if not out_indices or any(i not in (0, 1, 2, 3) for i in out_indices):
            raise ValueError(f"out_indices = {out_indices!r} (must be a non-empty subset of 0..3)")
        block, stage_blocks = ARCH_SETTINGS[depth]
        self.depth = depth
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.out_indices = out_indices

        self.conv1 = Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = BatchNorm2d(64)
        self.relu = ReLU()
        self.maxpool = MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, num_blocks in enumerate(stage_blocks):
            planes = 64 * 2 ** i
            layer = make_layer(block, inplanes, planes, num_blocks, stride=1 if i == 0 else 2)
            setattr(self, f"layer{i + 1}", layer)
            inplanes = planes * block.expansion
        self.out_channels = [64 * 2 ** i * block.expansion for i in out_indices]
        self.init_weights()
        self._freeze_stages()

    def init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                jt.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                jt.init.one_(m.weight)
                jt.init.zero_(m.bias)

    def frozen_modules(self):
        if self.frozen_stages < 0:
            return []
        return [self.conv1, self.bn1] + [getattr(self, f"layer{i}")
                                         for i in range(1, self.frozen_stages + 1)]

    def _freeze_stages(self):
        for module in self.frozen_modules():
            eval_mode(module)
            for p in module.parameters():
                p.stop_grad()

    def _apply_modes(self):
        self._freeze_stages()
        if self.is_training() and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.is_train = False

    def train(self):
        super().train()
        self._apply_modes()
        return self

    def execute(self, x):
        # Jittor's Module.train() on a parent flags every descendant directly and never
        # calls this class's train(): re-apply frozen stages and norm_eval on every forward.
        self._apply_modes()
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        record("backbone.stem", x)
        outs = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            record(f"backbone.layer{i + 1}", x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
