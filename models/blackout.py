"""Background activation black-out: the binary mask at every conv input, and where masks come from.

The mask (N, 1, H, W) at the detector's input size is max-pooled (2x2, stride 2, ceil mode)
into a pyramid; every convolution of the detector gets its input multiplied by the pyramid
level of exactly its input's spatial shape. Ceil-mode halving reproduces the output size of
every stride-2 layer of our detectors (3x3/pad 1 convs, 7x7/pad 3 stem, 3x3/pad 1 and
2x2 ceil-mode max-pools), odd sizes included, and max-pooling keeps a location foreground
as soon as any pixel under it is foreground.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def static_hw(shape) -> tuple[int, int]:
    """Spatial size as Python ints: under the ONNX tracer `x.shape` holds 0-d tensors, which
    hash by identity; the pyramid's levels are static for a static input size anyway."""
    return int(shape[-2]), int(shape[-1])


class MaskPyramid:
    """A binary mask and its ceil-mode 2x max-pooled reductions down to 1x1."""

    def __init__(self, mask: torch.Tensor):
        if mask.dim() != 4 or mask.shape[1] != 1:
            raise ValueError(f"mask must be (N, 1, H, W), got {tuple(mask.shape)}")
        self.levels = {static_hw(mask.shape): mask}
        while mask.shape[-2] > 1 or mask.shape[-1] > 1:
            mask = F.max_pool2d(mask, 2, 2, ceil_mode=True)
            self.levels[static_hw(mask.shape)] = mask

    def anchor_alive(self, feature_hws: list[tuple[int, int]], anchors_per_location: list[int]) -> torch.Tensor:
        """(N, A) bool: the anchors whose cell is foreground at the mask level of its feature map,
        in the heads' order (level by level, location-major, anchor-minor). Every conv input is
        masked, so a head's last conv reads zeros at a blacked-out cell and gives its bias there:
        such an anchor carries no evidence and is background by construction."""
        alive = []
        for hw, per_location in zip(feature_hws, anchors_per_location):
            cells = self.at(hw).flatten(1)  # (N, H*W)
            alive.append(cells[:, :, None].expand(-1, -1, per_location).reshape(cells.shape[0], -1))
        return torch.cat(alive, dim=1) > 0

    def at(self, hw: tuple[int, int]) -> torch.Tensor:
        try:
            return self.levels[static_hw(hw)]
        except KeyError:
            raise ValueError(f"no mask level of shape {tuple(hw)}; levels are {list(self.levels)}: "
                             "the detector reduced a feature map by something else than "
                             "ceil-mode halving") from None


class ConvInputBlackout:
    """Multiplies the input of every Conv2d of a network by the mask pyramid (forward pre-hooks).

    Hooks, rather than a modified conv class, keep state-dict keys and module code untouched
    and cover any architecture. They are registered first, so any later hook (MAC* counting)
    sees the masked input. With no mask set the hooks are a no-op (the vanilla detector).
    """

    def __init__(self, network: nn.Module):
        self.pyramid: MaskPyramid | None = None
        self.handles = [m.register_forward_pre_hook(self._mask_input, prepend=True)
                        for m in network.modules() if isinstance(m, nn.Conv2d)]

    def _mask_input(self, module: nn.Module, args: tuple) -> tuple | None:
        if self.pyramid is None:
            return None
        x = args[0]
        return (x * self.pyramid.at(x.shape[-2:]),) + args[1:]

    def set_mask(self, mask: torch.Tensor | None) -> None:
        self.pyramid = None if mask is None else MaskPyramid(mask)


def soft_argmax(logits: torch.Tensor, beta: float = 5.0) -> torch.Tensor:
    """Eq. 1: sum_i softmax(beta * x)_i * i over the class dim; (N, C, H, W) -> (N, 1, H, W)."""
    idx = torch.arange(logits.shape[1], dtype=logits.dtype, device=logits.device).view(1, -1, 1, 1)
    return (torch.softmax(beta * logits, dim=1) * idx).sum(dim=1, keepdim=True)


def hard_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Class index of the max logit as float, (N, C, H, W) -> (N, 1, H, W); 0 = background."""
    return logits.argmax(dim=1, keepdim=True).to(logits.dtype)


class _SurrogateArgmax(torch.autograd.Function):
    """Eq. 2: argmax forward, soft-argmax gradient backward."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, beta: float) -> torch.Tensor:
        ctx.save_for_backward(logits)
        ctx.beta = beta
        return hard_argmax(logits)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (logits,) = ctx.saved_tensors
        with torch.enable_grad():
            x = logits.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(soft_argmax(x, ctx.beta), x, grad_out)
        return grad, None


def sg_argmax(logits: torch.Tensor, beta: float = 5.0) -> torch.Tensor:
    """Eq. 2. Without autograd (inference, export) this is plain argmax, so the graph has no
    custom op and the mask is exactly 0/1."""
    if torch.is_grad_enabled() and logits.requires_grad:
        return _SurrogateArgmax.apply(logits, beta)
    return hard_argmax(logits)


ARGMAX_MODES = ("sg", "soft")


def binarize(logits: torch.Tensor, mode: str, beta: float, training: bool) -> torch.Tensor:
    """OMG logits -> mask. soft-argmax (Eq. 1) is used only while training, as in the paper."""
    if mode == "soft":
        return soft_argmax(logits, beta) if training else hard_argmax(logits)
    if mode == "sg":
        return sg_argmax(logits, beta)
    raise ValueError(f"unknown argmax mode {mode!r}; expected one of {ARGMAX_MODES}")


# --- external mask sources (paper Table 2) ----------------------------------------------------

def random_mask(shape: tuple[int, int, int, int], fg_ratio: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Salt-and-pepper mask: every pixel foreground with probability `fg_ratio`."""
    if not 0.0 <= fg_ratio <= 1.0:
        raise ValueError(f"fg_ratio must be in [0, 1], got {fg_ratio}")
    return (torch.rand(shape, generator=generator) < fg_ratio).float()


def spectral_residual_mask(images: torch.Tensor, threshold: float = 0.08,
                           work_size: int = 64) -> torch.Tensor:
    """Spectral-residual saliency (Hou & Zhang, CVPR 2007) thresholded into a mask.

    images: (N, 3, H, W) in any range. Saliency is computed on a `work_size` grey image,
    smoothed, normalised to [0, 1] per image and resized back; pixels above `threshold`
    are foreground (the paper uses 0.08).
    """
    n, _, h, w = images.shape
    grey = images.float().mean(dim=1, keepdim=True)
    small = F.interpolate(grey, size=(work_size, work_size), mode="bilinear", align_corners=False)[:, 0]
    spectrum = torch.fft.fft2(small)
    log_amplitude = torch.log(spectrum.abs() + 1e-8)
    phase = torch.angle(spectrum)
    smooth = F.avg_pool2d(log_amplitude[:, None], 3, 1, 1, count_include_pad=False)[:, 0]
    residual = log_amplitude - smooth
    saliency = torch.fft.ifft2(torch.exp(residual + 1j * phase)).abs() ** 2
    saliency = _gaussian_blur(saliency[:, None], sigma=2.5)
    lo = saliency.amin(dim=(2, 3), keepdim=True)
    hi = saliency.amax(dim=(2, 3), keepdim=True)
    saliency = (saliency - lo) / (hi - lo).clamp_min(1e-12)
    saliency = F.interpolate(saliency, size=(h, w), mode="bilinear", align_corners=False)
    return (saliency > threshold).float()


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = math.ceil(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    k = k / k.sum()
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))
