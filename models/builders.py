"""Model configuration and one builder per architecture (a small registry).

A `ModelConfig` is plain data (it is stored in checkpoints and IR metadata), and
`build_model(config)` is the only way the package turns it into a network.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from functools import partial
from typing import Callable

from torch import nn

from babo_edge.models.anchors import (BoxCoder, SSDPriorConfig, retinanet_anchors, ssd300_priors, ssd512_priors,
                                      ssd_priors, ssdlite_priors)
from babo_edge.models.binary import binarize
from babo_edge.models.detector import BABODetector, SingleShotDetector
from babo_edge.models.fast_scnn import FastSCNN
from babo_edge.models.mobilenetv2 import MobileNetV2
from babo_edge.models.postprocess import PostprocessConfig
from babo_edge.models.retinanet import FPN, ResNet, RetinaHead
from babo_edge.models.ssd import SSDHead, SSDLiteExtras
from babo_edge.models.vgg_ssd import SSD300_EXTRA_LEVELS, SSD512_EXTRA_LEVELS, SSDNeck, SSDVGG16, scaled_extra_levels

SSDLITE_EXTRA_DEPTHS = (512, 256, 256, 128)
IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, 0..255: the normalisation of every backbone here
IMAGENET_STD = (58.395, 57.12, 57.375)
OMG_FOREGROUND_BIAS = 3.0  # an untrained OMG keeps nearly every pixel (see FastSCNN)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; sizes are (height, width)."""

    arch: str = "mnv2-ssdlite"
    width: float = 1.0
    num_classes: int = 80
    input_size: tuple[int, int] = (512, 512)
    omg: bool = True
    omg_size: tuple[int, int] | None = (256, 256)
    argmax: str = "sg"
    beta: float = 5.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    # SSDLite: the smallest prior (first level) as a fraction of the input side; None keeps
    # MMDetection's 48/320. A configuration, not the architecture: small objects need it.
    first_prior_size: float | None = None
    # Channel-pruned widths (models/pruning.py), None = the published ones. MobileNetV2-SSDLite
    # only: {"backbone": hidden channels per inverted residual, "stages": output channels per
    # MobileNetV2 stage, "head_conv": [the final 1x1 conv's outputs], "extras": middle channels
    # per extra level}; a missing key keeps that part's published widths.
    pruned_widths: dict[str, list[int]] | None = None
    # Binarized weights and activations (models/binary.py, scheme "bireal"); None: real-valued.
    binarize: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        data = dict(data)
        for key in ("input_size", "omg_size", "mean", "std"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        if "postprocess" in data:
            data["postprocess"] = PostprocessConfig(**data["postprocess"])
        return cls(**data)


def mnv2_ssdlite(config: ModelConfig) -> SingleShotDetector:
    """MobileNetV2-SSDLite (MobileNetV2 paper, section 6.2): taps on the expansion output of
    the first stride-32 block and on the final 1x1 conv, four SSDLite extra levels, SSDLite
    heads, MMDetection's priors. The width multiplier scales the MobileNetV2 backbone only (as
    in MMDetection's SSDLite neck); this is what reproduces the BABO paper's Table 4 GMAC at
    widths 0.75 and 0.5 (scaling the extras too would give 0.885 GMAC instead of 0.95 at 0.5)."""
    widths = config.pruned_widths or {}
    backbone = MobileNetV2(config.width, widths.get("backbone"), widths.get("stages"),
                           *widths.get("head_conv", [None]))
    depths = SSDLITE_EXTRA_DEPTHS
    priors = ssdlite_priors(config.first_prior_size)
    head = SSDHead((*backbone.tap_channels, *depths), priors.anchors_per_location(),
                   config.num_classes + 1, depthwise=True)
    return SingleShotDetector(backbone, SSDLiteExtras(backbone.tap_channels[1], depths, widths.get("extras")), head,
                              partial(ssd_priors, priors), BoxCoder((0.1, 0.1, 0.2, 0.2)),
                              "softmax", config.num_classes, priors.anchors_per_location())


# --- heavy detectors of the paper's Table 5 (MMDetection 2.x configs) ----------------------


def _vgg16_ssd(config: ModelConfig, extra_levels: tuple[tuple[int, int, int, int], ...],
               priors: SSDPriorConfig, batch_norm: bool = False) -> SingleShotDetector:
    backbone = SSDVGG16(config.width, batch_norm)
    neck = SSDNeck(backbone.out_channels, scaled_extra_levels(extra_levels, config.width), batch_norm)
    head = SSDHead(neck.out_channels, priors.anchors_per_location(), config.num_classes + 1,
                   depthwise=False)
    return SingleShotDetector(backbone, neck, head, partial(ssd_priors, priors),
                              BoxCoder((0.1, 0.1, 0.2, 0.2)), "softmax", config.num_classes,
                              priors.anchors_per_location())


def vgg16_ssd300(config: ModelConfig) -> SingleShotDetector:
    """MMDetection's ssd300_coco (the SSD and BiDet papers' VGG16 case): VGG16 + L2Norm + four
    extra levels, plain 3x3 SSD heads, softmax over classes + background, 8732 priors at
    300x300 (feature maps 38..1); sides of 256 px or less fail (the last level's unpadded 3x3
    conv needs a 3x3 map). The width multiplier scales the trunk and the neck (1.0: the published
    network). MMDetection normalises this model with std (1, 1, 1)."""
    return _vgg16_ssd(config, SSD300_EXTRA_LEVELS, ssd300_priors())


def vgg16_bn_ssd300(config: ModelConfig) -> SingleShotDetector:
    """`vgg16_ssd300` with a BN after every trunk and neck conv (torchvision's vgg16_bn, ScratchDet's
    SSD trained from scratch): without ImageNet weights, the plain VGG16-SSD does not learn here."""
    return _vgg16_ssd(config, SSD300_EXTRA_LEVELS, ssd300_priors(), batch_norm=True)


def vgg16_ssd512(config: ModelConfig) -> SingleShotDetector:
    """MMDetection's ssd512_coco: as `vgg16_ssd300` with five extra levels for 512x512 inputs
    (feature maps 64..1); sides below ~264 px fail, as the last level's 4x4 conv needs a 2x2 map."""
    return _vgg16_ssd(config, SSD512_EXTRA_LEVELS, ssd512_priors())


def retinanet_r101(config: ModelConfig) -> SingleShotDetector:
    """MMDetection's retinanet_r101_fpn_1x_coco: ResNet-101, FPN P3-P7, RetinaHead with 9
    anchors per location, sigmoid scores, unit box-coder stds. The paper's size is
    800x1216 (H, W); the width multiplier does not apply."""
    backbone = ResNet()
    return SingleShotDetector(backbone, FPN(tuple(backbone.out_channels)), RetinaHead(config.num_classes),
                              retinanet_anchors, BoxCoder((1.0, 1.0, 1.0, 1.0)), "sigmoid",
                              config.num_classes, [9] * 5)


DETECTORS: dict[str, Callable[[ModelConfig], SingleShotDetector]] = {
    "mnv2-ssdlite": mnv2_ssdlite,
    "vgg16-ssd300": vgg16_ssd300,
    "vgg16-bn-ssd300": vgg16_bn_ssd300,
    "vgg16-ssd512": vgg16_ssd512,
    "retinanet-r101": retinanet_r101,
}


def build_detector(config: ModelConfig) -> SingleShotDetector:
    if config.pruned_widths is not None and config.arch != "mnv2-ssdlite":
        raise ValueError(f"pruned widths are supported for mnv2-ssdlite only, not {config.arch!r}")
    try:
        builder = DETECTORS[config.arch]
    except KeyError:
        raise ValueError(f"unknown architecture {config.arch!r}; known: {sorted(DETECTORS)}") from None
    return builder(config)


def build_model(config: ModelConfig, detector: SingleShotDetector | None = None) -> BABODetector:
    """The BABO model of `config`: with the Fast-SCNN OMG when `config.omg`, else vanilla.
    `detector`: a real-valued detector of `config`'s architecture to use (binarized first when
    `config.binarize`) instead of a new one, e.g. one holding FP32 weights to fine-tune binary."""
    omg: nn.Module | None = FastSCNN(2, foreground_bias=OMG_FOREGROUND_BIAS) if config.omg else None
    detector = build_detector(config) if detector is None else detector
    if config.binarize:  # before BABODetector: its mask hooks attach to the convs present
        binarize(detector, config.binarize)
    return BABODetector(detector, omg, omg_size=config.omg_size if config.omg else None,
                        argmax=config.argmax, beta=config.beta, mean=config.mean, std=config.std,
                        postprocess=config.postprocess)
