"""Binarized convolutions (BiDet, Wang et al. CVPR 2020, on the Bi-Real / XNOR-Net recipe).

A binary conv computes conv(sign(pad(x, -1)), sign(W)) * alpha, alpha = mean|W| per output
channel. Activations take the Bi-Real ApproxSign gradient (2 - 2|x| for |x| < 1, else 0);
weights a clipped straight-through gradient (identity for |W| <= 1), alpha its own. Padding is
applied before the sign with -1, so a border is a valid binary value (OpenVINO's
BinaryConvolution pads with a binary value too; a 0 pad would not be +-1).

On ONNX export (TorchScript exporter) the activation sign becomes OpenVINO's
`org.openvinotoolkit::FakeQuantize` with levels=2 and outputs -1/+1, the weight sign(W) a
constant of exactly +-1 and alpha a Multiply after the conv: the pattern OpenVINO's
ConvToBinaryConv rewrites into a BinaryConvolution (a plain ONNX Sign is never converted).

Which convs are binarized (`binary_conv_names`): never the first conv, the prediction convs
(paper: they stay real-valued) nor depthwise convs (BinaryConvolution has no groups). A conv
whose input comes out of a ReLU/ReLU6 cannot be binarized as it stands either: its input is
>= 0, so sign() would be +1 everywhere and the layer would carry no information.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from babo_edge.models.mobilenetv2 import MobileNetV2
from babo_edge.models.vgg_ssd import SSDVGG16

SCHEMES = ("bireal",)
# FakeQuantize levels=2 switches at the midpoint of [input_low, input_high] (equal bounds give NaN
# on the CPU plugin): an interval centred on 0 switches at 0, and sign(0) = -1 as in `binary_sign`;
# |x| below ~1e-11 (float rounding of the midpoint) ties to -1. The interval must stay wide once
# the plugin folds a preceding per-channel Add into the bounds (its INT8 pipeline does): an
# interval of 1e-20 collapsed there (benchmarks/README.md#bidet), and the older [0, 1e-6] turned
# (0, 5e-7] into -1.
FQ_STEP = 2e-4


def _sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where x > 0, else -1 (sign(0) = -1: a binary tensor has no zeros), in x's dtype."""
    return torch.where(x > 0, 1.0, -1.0).to(x.dtype)


class ApproxSign(torch.autograd.Function):
    """sign (0 -> -1) with Bi-Real's ApproxSign gradient; exported as a 2-level FakeQuantize."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return _sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (2 - 2 * x.abs()).clamp_min(0)

    @staticmethod
    def symbolic(g, x):
        def const(value: float):
            return g.op("Constant", value_t=torch.tensor(value, dtype=torch.float32))

        out = g.op("org.openvinotoolkit::FakeQuantize", x, const(-FQ_STEP / 2), const(FQ_STEP / 2),
                   const(-1.0), const(1.0), levels_i=2)
        out.setType(x.type())  # same shape and dtype: keeps the exporter's shape inference going
        return out


class WeightSign(torch.autograd.Function):
    """sign (0 -> -1) of weights with the clipped straight-through gradient (1 for |W| <= 1)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w)
        return _sign(w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (w,) = ctx.saved_tensors
        return grad * (w.abs() <= 1).to(grad.dtype)


def binary_sign(x: torch.Tensor) -> torch.Tensor:
    return ApproxSign.apply(x)


class BinaryConv2d(nn.Conv2d):
    """Conv2d with binary activations and weights (see the module docstring). Same parameters
    and state-dict keys as the nn.Conv2d it replaces, so an FP32 checkpoint initialises it."""

    def alpha(self) -> torch.Tensor:
        return self.weight.abs().mean(dim=(1, 2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.padding
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph), value=-1.0)
        out = F.conv2d(binary_sign(x), WeightSign.apply(self.weight), None, self.stride, 0,
                       self.dilation, self.groups)
        out = out * self.alpha().view(1, -1, 1, 1)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "BinaryConv2d":
        if conv.groups != 1:
            raise ValueError("grouped/depthwise convs cannot be binarized (BinaryConvolution has no groups)")
        if isinstance(conv.padding, str):
            raise ValueError("binary convs need explicit padding")
        binary = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     conv.dilation, 1, conv.bias is not None)
        binary.load_state_dict(conv.state_dict())
        return binary


class BinaryConvBN(nn.Module):
    """Bi-Real block for a VGG16 conv: binary conv + BN, plus the real-valued identity shortcut
    around both when the shapes allow (same channels, stride 1). `bn`: the conv's own BN
    (VGG16-BN), moved inside the block; else a new one."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None):
        super().__init__()
        self.conv = BinaryConv2d.from_conv(conv)
        self.bn = nn.BatchNorm2d(conv.out_channels) if bn is None else bn
        self.shortcut = conv.in_channels == conv.out_channels and tuple(conv.stride) == (1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        return out + x if self.shortcut else out


def binary_conv_names(detector: nn.Module) -> list[str]:
    """Qualified names of the convs `binarize` replaces, per backbone.

    MobileNetV2(-SSDLite): the 1x1 expansion convs and the final 1x1 `head_conv`. Their inputs
    are the linear bottleneck outputs (signed); each is followed by its BN already (no shortcut:
    the expansion changes the width). The 1x1 projections and the SSDLite extras' 1x1 convs
    read ReLU6 outputs and stay real, as do the stem, the depthwise convs and the heads.
    VGG16-SSD: every conv of blocks 1-5 but conv1_1 (the first), and fc6/fc7; the trunk's ReLUs
    are removed (Bi-Real has none: conv1_1's output and each binary block's BN output, plus the
    shortcut, are signed).
    """
    backbone = detector.backbone
    if isinstance(backbone, MobileNetV2):
        names = [f"backbone.stages.{i}.{j}.expand.0" for i, stage in enumerate(backbone.stages)
                 for j, block in enumerate(stage) if not isinstance(block.expand, nn.Identity)]
        return names + ["backbone.head_conv.0"]
    if isinstance(backbone, SSDVGG16):
        return [f"backbone.{name}" for name, m in backbone.named_modules()
                if isinstance(m, nn.Conv2d) and not name.endswith("conv1_1")]
    raise ValueError(f"binarization is defined for MobileNetV2 and VGG16 backbones, not {type(backbone).__name__}")


def binarize(detector: nn.Module, scheme: str = "bireal") -> nn.Module:
    """Replaces, in place, the convs of `binary_conv_names` by binary ones and returns the
    detector. MobileNetV2 keeps its state-dict keys (BinaryConv2d is a Conv2d); VGG16's convs
    become BinaryConvBN blocks (new BN parameters) and their ReLUs identities."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown binarization scheme {scheme!r}; known: {SCHEMES}")
    for name in binary_conv_names(detector):
        parent_name, _, child = name.rpartition(".")
        parent = detector.get_submodule(parent_name)
        conv = getattr(parent, child)
        if isinstance(parent, nn.Sequential) and child.isdigit():  # ConvNormAct: BN follows
            parent[int(child)] = BinaryConv2d.from_conv(conv)
            continue
        names = list(parent._modules)
        following = parent._modules[names[names.index(child) + 1]] if names.index(child) + 1 < len(names) else None
        if isinstance(following, nn.BatchNorm2d):  # VGG16-BN: the block takes the conv's BN
            setattr(parent, names[names.index(child) + 1], nn.Identity())
            setattr(parent, child, BinaryConvBN(conv, following))
        else:
            setattr(parent, child, BinaryConvBN(conv))
    if not isinstance(detector.backbone, MobileNetV2):  # VGG16: every ReLU of the trunk feeds a binary conv
        for name, module in list(detector.backbone.named_modules()):
            if isinstance(module, nn.ReLU):
                parent_name, _, child = name.rpartition(".")
                setattr(detector.backbone.get_submodule(parent_name), child, nn.Identity())
    return detector


def binary_convs(model: nn.Module) -> list[tuple[str, BinaryConv2d]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, BinaryConv2d)]


def parameter_bits(model: nn.Module) -> int:
    """Model size the paper's way: binary conv weights at 1 bit (plus one 32-bit alpha per output
    channel), every other parameter at 32 bits."""
    binary = {id(m.weight): m for _, m in binary_convs(model)}
    return sum(p.numel() + 32 * binary[id(p)].out_channels if id(p) in binary else 32 * p.numel()
               for p in model.parameters())
