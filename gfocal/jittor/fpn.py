"""FPN neck with extra levels on its own output (docs/MODEL.md section 2) and the shared ConvModule."""
import jittor as jt
from jittor import nn

from .kernels import GroupNormFunction, ReLU
from .precision import Conv2d
from .probes import record



class GroupNorm(nn.Module):
    """GroupNorm with a two-pass variance (mean of squared deviations, as PyTorch): Jittor's
    nn.GroupNorm uses E[x^2] - E[x]^2, which cancels catastrophically for large means."""

    def __init__(self, num_groups, num_channels, eps=1e-5):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels are not divisible into "
                             f"{num_groups} groups")
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.weight = jt.ones((num_channels,), "float32")
        self.bias = jt.zeros((num_channels,), "float32")

    def execute(self, x):
        if x.ndim < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"GroupNorm expects (N, {self.num_channels}, ...), got {x.shape}")
        return GroupNormFunction(self.num_groups, self.eps)(x, self.weight, self.bias)


class ConvModule(nn.Module):
    """conv -> optional GroupNorm (`gn`) -> optional ReLU, keys `conv.*` and `gn.*`."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 norm=None, gn_groups=32, act=None):
        super().__init__()
        if norm not in (None, "gn"):
            raise ValueError(f"ConvModule norm = {norm!r} (must be None or 'gn')")
        if act not in (None, "relu"):
            raise ValueError(f"ConvModule act = {act!r} (must be None or 'relu')")
        if norm == "gn" and out_channels % gn_groups:
            raise ValueError(f"ConvModule: {out_channels} channels are not divisible into "
                             f"gn_groups = {gn_groups}")
        self.conv = Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=padding, bias=bias)
        self.gn = GroupNorm(gn_groups, out_channels) if norm == "gn" else None
        self.act = ReLU() if act == "relu" else None

    def execute(self, x):
        x = self.conv(x)
        if self.gn is not None:
            x = self.gn(x)
        if self.act is not None:
            x = self.act(x)
        return x


def upsample_nearest(x, size):
    """Nearest upsampling to the exact (h, w): source index floor(dst * float32(in / out)).

    Always an explicit size, never a scale factor (Jittor and PyTorch round differently then);
    the tests check that both ports pick the same indices over a sweep of odd sizes."""
    return nn.interpolate(x, size=tuple(int(s) for s in size), mode="nearest")


class FPN(nn.Module):
    """Feature pyramid over in_channels[start_level:], plus stride-2 3x3 convs on the last
    output up to num_outs levels. Returns P3..P7 (for C3..C5 in); records the laterals
    (`neck.lateral.i`, before the top-down sum) and the outputs (`neck.p3`, `neck.p4`, ...)."""

    def __init__(self, in_channels, out_channels=256, num_outs=5, start_level=0):
        super().__init__()
        in_channels = list(in_channels)
        if not 0 <= start_level < len(in_channels):
            raise ValueError(f"FPN start_level = {start_level} is outside the "
                             f"{len(in_channels)} input levels")
        num_ins = len(in_channels) - start_level
        if num_outs < num_ins:
            raise ValueError(f"FPN num_outs = {num_outs} is fewer than the {num_ins} used inputs")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.start_level = start_level
        self.lateral_convs = nn.ModuleList(
            [ConvModule(c, out_channels, 1) for c in in_channels[start_level:]])
        fpn_convs = [ConvModule(out_channels, out_channels, 3, padding=1) for _ in range(num_ins)]
        fpn_convs += [ConvModule(out_channels, out_channels, 3, stride=2, padding=1)
                      for _ in range(num_outs - num_ins)]
        self.fpn_convs = nn.ModuleList(fpn_convs)
        self.init_weights()

    def init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                jt.init.xavier_uniform_(m.weight, gain=1.0)
                if m.bias is not None:
                    jt.init.zero_(m.bias)

    def execute(self, inputs):
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} inputs, got {len(inputs)}")
        laterals = [conv(inputs[i + self.start_level])
                    for i, conv in enumerate(self.lateral_convs)]
        for i, lateral in enumerate(laterals):
            record(f"neck.lateral.{i}", lateral)
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + upsample_nearest(laterals[i],
                                                                 laterals[i - 1].shape[2:])
        outs = [self.fpn_convs[i](lateral) for i, lateral in enumerate(laterals)]
        for i in range(len(laterals), self.num_outs):
            outs.append(self.fpn_convs[i](outs[-1]))  # 'on_output': no ReLU before
        for i, out in enumerate(outs):
            record(f"neck.p{i + 3}", out)
        return tuple(outs)
