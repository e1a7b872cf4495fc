"""ResNet encoders as SimCLRv2 builds them, with optional selective kernels (SK).

Follows the structure of the official ``google-research/simclr`` ``tf2/resnet.py``:

* post-activation ResNet v1.5 (the stride sits on the 3x3 conv of a bottleneck);
* a projection shortcut in the first block of *every* stage, stage 1 included;
* the last BatchNorm of each residual branch starts with gamma = 0, so every block starts as
  ``relu(shortcut(x))``;
* with ``sk_ratio > 0`` (SimCLRv2's "+SK" models) three changes, all from the official code:
  the bottleneck 3x3 conv becomes a two-branch selective-kernel conv, the 7x7 stem becomes three
  3x3 convs, and projection shortcuts average-pool before a stride-1 1x1 conv (ResNet-D).
  Basic blocks (ResNet-18/34) keep plain 3x3 convs, as in the official code.
* "SAME" padding where TensorFlow pads asymmetrically (stem max pool, stride-1 shortcut pool).

There is no classifier: the encoder returns globally average-pooled features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclrv2.models.batchnorm import BatchNorm2d

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "SelectiveKernelConv", "RESNET_SPECS"]

# Official SK_Conv2D: the squeeze width is filters * sk_ratio, but never below this.
SK_MIN_DIM = 32


def scaled_channels(base: int, width: float) -> int:
    """Channels of a layer with ``base`` channels at width multiplier ``width`` (at least 1)."""
    return max(1, round(base * width))


class ConvBnAct(nn.Sequential):
    """Bias-free conv, BatchNorm and optionally ReLU (the official ``Conv2dFixedPadding`` + ``BatchNormRelu``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 act: bool = True) -> None:
        layers: list[nn.Module] = [
            # Odd kernels: symmetric padding matches TF's fixed padding (stride > 1) and SAME (stride 1).
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
            BatchNorm2d(out_channels),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)

    @property
    def bn(self) -> nn.BatchNorm2d:
        return self[1]

    def forward(self, x: Tensor) -> Tensor:
        conv = self[0]
        only_padding = min(x.shape[-2:]) <= conv.kernel_size[0] // 2  # some taps never see the map
        if only_padding and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # Some kernel taps see only padding (a 1x1 map under a 3x3 at the end of a small-image network):
            # oneDNN's bf16 weight gradient now and then returned NaN for those taps instead of 0 (torch 2.14,
            # AMX CPU; about one run in three of tests/test_benchmarks.py's semisup run with one thread), so
            # such convolutions run in float32.
            with torch.autocast("cpu", enabled=False):
                x = conv(x.float())
            for layer in list(self)[1:]:
                x = layer(x)
            return x
        return super().forward(x)


class MaxPoolSame(nn.Module):
    """Max pool with TensorFlow "SAME" padding (extra padding goes to the bottom/right)."""

    def __init__(self, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def _pad(self, size: int) -> tuple[int, int]:
        total = max((math.ceil(size / self.stride) - 1) * self.stride + self.kernel_size - size, 0)
        return total // 2, total - total // 2

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, (*self._pad(x.shape[-1]), *self._pad(x.shape[-2])), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


class AvgPoolSame2x2(nn.Module):
    """2x2 stride-1 average pool with TF "SAME" padding: one cell of padding bottom/right, not counted."""

    def forward(self, x: Tensor) -> Tensor:
        # Padding 1 on every side then dropping the first row/column leaves only the bottom/right padding.
        return F.avg_pool2d(x, 2, stride=1, padding=1, count_include_pad=False)[..., 1:, 1:]


def projection_shortcut(in_channels: int, out_channels: int, stride: int, avg_down: bool) -> nn.Sequential:
    """1x1 conv + BN shortcut; with ``avg_down`` (SK models) the stride is done by a 2x2 average pool."""
    if not avg_down:
        return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                             BatchNorm2d(out_channels))
    if stride == 1:
        pool: list[nn.Module] = [AvgPoolSame2x2()]
    else:
        # TF FixedPadding(2) pads bottom/right by one (zeros, counted), then a VALID pool.
        pool = [nn.ZeroPad2d((0, 1, 0, 1)), nn.AvgPool2d(2, stride)]
    return nn.Sequential(*pool, nn.Conv2d(in_channels, out_channels, 1, bias=False), BatchNorm2d(out_channels))


class SelectiveKernelConv(nn.Module):
    """Selective-kernel 3x3 conv (Li et al. 2019) as in the official SimCLRv2 ``SK_Conv2D``.

    One 3x3 conv (+BN+ReLU) makes ``2 * out_channels`` channels, split into two branches. Their
    sum is pooled globally and squeezed (1x1 conv to ``max(out_channels * sk_ratio, 32)`` + BN +
    ReLU), then expanded to ``2 * out_channels`` logits; a softmax over the two branches gives
    per-channel mixing weights. Both branches are 3x3 convs, as in the official code (the SK
    paper's dilated second branch is not used).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, sk_ratio: float,
                 min_dim: int = SK_MIN_DIM) -> None:
        super().__init__()
        mid_channels = max(int(out_channels * sk_ratio), min_dim)
        self.conv = ConvBnAct(in_channels, 2 * out_channels, 3, stride)
        self.squeeze = ConvBnAct(out_channels, mid_channels, 1)
        self.expand = nn.Conv2d(mid_channels, 2 * out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        branches = self.conv(x).unflatten(1, (2, -1))  # [B, 2, C, H, W]
        context = branches.sum(1).mean((2, 3), keepdim=True)
        logits = self.expand(self.squeeze(context)).unflatten(1, (2, -1))  # [B, 2, C, 1, 1]
        return (branches * logits.softmax(dim=1)).sum(1)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). SK only changes the projection shortcut here, as officially."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int, use_projection: bool,
                 sk_ratio: float = 0.0) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = ConvBnAct(in_channels, channels, 3, stride)
        self.conv2 = ConvBnAct(channels, out_channels, 3, act=False)
        self.shortcut = (projection_shortcut(in_channels, out_channels, stride, avg_down=sk_ratio > 0)
                         if use_projection else nn.Identity())
        self.act = nn.ReLU(inplace=True)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.bn.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (or selective-kernel) conv carrying the stride, 1x1 expand by 4 (ResNet-50+)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int, use_projection: bool,
                 sk_ratio: float = 0.0) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = ConvBnAct(in_channels, channels, 1)
        self.conv2: nn.Module = (SelectiveKernelConv(channels, channels, stride, sk_ratio) if sk_ratio > 0
                                 else ConvBnAct(channels, channels, 3, stride))
        self.conv3 = ConvBnAct(channels, out_channels, 1, act=False)
        self.shortcut = (projection_shortcut(in_channels, out_channels, stride, avg_down=sk_ratio > 0)
                         if use_projection else nn.Identity())
        self.act = nn.ReLU(inplace=True)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.bn.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))


# depth -> (block type, blocks per stage), as in the official ``resnet()``.
RESNET_SPECS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """ResNet encoder: stem, four stages, global average pool; no classifier.

    Args:
        depth: 18, 34, 50, 101 or 152.
        width: channel multiplier (1, 2, 3 in the paper; fractions such as 0.25 for small runs).
        sk_ratio: selective-kernel squeeze ratio (SimCLRv2 uses 0.0625); 0 disables SK.
        cifar_stem: a single stride-1 3x3 conv and no max pool, for 32-pixel images.
        in_channels: channels of the input images.
    """

    def __init__(self, depth: int = 50, width: float = 1.0, sk_ratio: float = 0.0, cifar_stem: bool = False,
                 in_channels: int = 3) -> None:
        super().__init__()
        if depth not in RESNET_SPECS:
            raise ValueError(f"unsupported ResNet depth {depth}; expected one of {sorted(RESNET_SPECS)}")
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        if sk_ratio < 0:
            raise ValueError(f"sk_ratio must be >= 0, got {sk_ratio}")
        self.depth = depth
        self.width = width
        self.sk_ratio = sk_ratio
        self.cifar_stem = cifar_stem
        block, blocks_per_stage = RESNET_SPECS[depth]

        self.stem = self._make_stem(in_channels, scaled_channels(64, width), sk_ratio > 0, cifar_stem)
        channels = scaled_channels(64, width)
        stages = []
        for i, num_blocks in enumerate(blocks_per_stage):
            stage_channels = scaled_channels(64 * 2 ** i, width)
            stride = 1 if i == 0 else 2
            stage = [block(channels, stage_channels, stride, use_projection=True, sk_ratio=sk_ratio)]
            channels = stage_channels * block.expansion
            stage += [block(channels, stage_channels, 1, use_projection=False, sk_ratio=sk_ratio)
                      for _ in range(num_blocks - 1)]
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.num_features = channels
        self.reset_parameters()

    @staticmethod
    def _make_stem(in_channels: int, channels: int, deep: bool, cifar_stem: bool) -> nn.Sequential:
        if cifar_stem:
            return nn.Sequential(ConvBnAct(in_channels, channels, 3, 1))
        if deep:  # ResNet-D stem of the SK models: three 3x3 convs
            half = max(1, channels // 2)
            convs = [ConvBnAct(in_channels, half, 3, 2), ConvBnAct(half, half, 3, 1), ConvBnAct(half, channels, 3, 1)]
        else:
            convs = [ConvBnAct(in_channels, channels, 7, 2)]
        return nn.Sequential(*convs, MaxPoolSame(3, 2))

    def reset_parameters(self) -> None:
        """Official initialisation: TF ``VarianceScaling()`` convs, BN (1, 0), last BN of each block gamma = 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # VarianceScaling(scale=1, fan_in, truncated_normal): the std is corrected for the truncation at 2 std.
                fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
                nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                m.zero_init_last()

    def forward_features(self, x: Tensor) -> Tensor:
        """Images ``[B, C, H, W]`` -> pooled features ``[B, num_features]``."""
        return self.stages(self.stem(x)).mean((2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)

    def extra_repr(self) -> str:
        return (f"depth={self.depth}, width={self.width}, sk_ratio={self.sk_ratio}, "
                f"cifar_stem={self.cifar_stem}, num_features={self.num_features}")
