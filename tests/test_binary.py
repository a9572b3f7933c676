"""Binarized convolutions (models/binary.py), the BiDet losses and the BinaryConvolution export."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from babo_edge.models.accounting import ConvLayer, LayerCount, binary_figures, build_report
from babo_edge.models.binary import (BinaryConv2d, BinaryConvBN, binarize, binary_conv_names, binary_convs, binary_sign,
                                    parameter_bits)
from babo_edge.models.builders import ModelConfig, build_detector, build_model, vgg16_ssd512
from babo_edge.models.profiling import mac_report
from babo_edge.train.losses import information_bottleneck_loss, sparse_object_prior_loss
from babo_edge.train.options import check_binarize


def test_sign_forward_and_approxsign_gradient():
    x = torch.tensor([-1.5, -0.5, 0.0, 0.25, 0.9, 1.2], requires_grad=True)
    y = binary_sign(x)
    assert y.tolist() == [-1, -1, -1, 1, 1, 1]  # sign(0) = -1, as the exported FakeQuantize
    y.sum().backward()
    assert x.grad.tolist() == pytest.approx([0.0, 1.0, 2.0, 1.5, 0.2, 0.0])  # 2 - 2|x| inside (-1, 1)


def test_weight_alpha_sign_and_straight_through_gradient():
    conv = BinaryConv2d(2, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[0.5, -1.5], [-0.2, -0.4]]).view(2, 2, 1, 1))
    assert conv.alpha().tolist() == pytest.approx([1.0, 0.3])
    x = torch.tensor([0.7, -0.1]).view(1, 2, 1, 1)  # signs (+1, -1)
    out = conv(x).flatten()
    # channel 0: alpha 1 * (+1*+1 + -1*-1) = 2; channel 1: 0.3 * (-1*+1 + -1*-1) = 0
    assert out.tolist() == pytest.approx([2.0, 0.0])
    out[0].backward()
    # d out0 / d W0 = alpha * sign(x) (straight through, |W| <= 1) + d alpha / d W0 * 2;
    # W0[1] = -1.5 is outside the clip, so only its alpha path remains: 2 * sign(W) / 2 = -1.
    assert conv.weight.grad.flatten().tolist() == pytest.approx([1 + 1, 0 - 1, 0, 0])


def test_binary_activations_are_padded_with_minus_one():
    conv = BinaryConv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    out = conv(torch.full((1, 1, 2, 2), 0.5))  # all +1 inside
    # every 3x3 window holds the 4 inputs (+1) and 5 pads (-1): 4 - 5 = -1 (a 0 pad would give 4)
    assert out.flatten().tolist() == [-1.0] * 4


def mnv2_config(**overrides) -> ModelConfig:
    return ModelConfig(num_classes=3, input_size=(64, 64), omg=False, omg_size=None, **overrides)


def test_mnv2_binarization_keeps_the_real_layers_and_the_state_dict_keys():
    real = build_model(mnv2_config())
    binary = build_model(mnv2_config(binarize="bireal"))
    assert binary.state_dict().keys() == real.state_dict().keys()  # an FP32 checkpoint initialises it
    binary.load_state_dict(real.state_dict())
    names = [name for name, _ in binary_convs(binary.detector)]
    assert len(names) == 17  # 16 expansion convs (stages 2-7) + head_conv
    assert names == binary_conv_names(binary.detector)
    assert all(m.kernel_size == (1, 1) for _, m in binary_convs(binary))
    assert not isinstance(binary.detector.backbone.stem[0], BinaryConv2d)
    for name, module in binary.detector.named_modules():
        if isinstance(module, nn.Conv2d) and (module.groups > 1 or name.startswith(("head", "neck"))):
            assert not isinstance(module, BinaryConv2d), name


def test_vgg16_trunk_binarizes_with_bn_and_shortcuts():
    detector = binarize(vgg16_ssd512(ModelConfig(arch="vgg16-ssd512", num_classes=2, omg=False)))
    blocks = {name: m for name, m in detector.backbone.named_modules() if isinstance(m, BinaryConvBN)}
    assert len(blocks) == 14  # 13 VGG16 convs but conv1_1, plus fc6 and fc7
    assert "block1.conv1_1" not in blocks and isinstance(detector.backbone.block1.conv1_1, nn.Conv2d)
    # same width and stride 1: conv1_2, conv2_2, conv3_2/3, conv4_2/3, conv5_1..3, fc7 -> 10 shortcuts
    assert sum(b.shortcut for b in blocks.values()) == 10
    assert not any(isinstance(m, nn.ReLU) for m in detector.backbone.modules())
    c4, fc7 = detector.backbone(torch.randn(1, 3, 64, 64))
    assert c4.shape == (1, 512, 8, 8) and fc7.shape == (1, 1024, 4, 4)


def test_vgg16_bn_binary_blocks_take_the_convs_own_batch_norm():
    detector = build_detector(ModelConfig(arch="vgg16-bn-ssd300", width=0.25, num_classes=2, omg=False))
    conv_bn = detector.backbone.block2.bn2_1
    binarize(detector)
    block = detector.backbone.block2.conv2_1
    assert isinstance(block, BinaryConvBN) and block.bn is conv_bn
    assert isinstance(detector.backbone.block2.bn2_1, nn.Identity)
    assert isinstance(detector.backbone.block1.bn1_1, nn.BatchNorm2d)  # conv1_1 stays real, with its BN
    # One BN per binary conv, none doubled: 12 trunk convs, fc6, fc7.
    bns = [name for name, m in detector.backbone.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 15 and sum(name.endswith(".bn") for name in bns) == 14


def test_a_binarized_vgg16_fine_tunes_from_the_fp32_checkpoint(tiny_dataset, tmp_path):
    """The FP32 weights load into the real-valued detector, which is then binarized: BinaryConvBN
    renames VGG16's conv parameters, so a plain load would not match."""
    from babo_edge.models.checkpoint import save_checkpoint
    from babo_edge.train.engine import TrainConfig, prepare_model
    fp32 = ModelConfig(arch="vgg16-bn-ssd300", width=0.25, num_classes=2, input_size=(264, 264), omg=False)
    torch.manual_seed(0)
    real = build_model(fp32).eval()
    ckpt = save_checkpoint(tmp_path / "fp32.pt", real, fp32, ["a", "b"])
    config = TrainConfig(mode="vanilla", model=replace(fp32, binarize="bireal"), data=str(tiny_dataset),
                         init=str(ckpt), binarize="plain", schedule="step", steps=(1,), out=str(tmp_path / "out"))
    binary = prepare_model(config)
    block = binary.detector.backbone.block3.conv3_2
    assert torch.equal(block.conv.weight, real.detector.backbone.block3.conv3_2.weight)
    assert torch.equal(block.bn.running_var, real.detector.backbone.block3.bn3_2.running_var)
    head = binary.detector.head.state_dict()  # the real-valued heads keep their keys and weights
    assert all(torch.equal(head[key], value) for key, value in real.detector.head.state_dict().items())


def test_old_configs_load_and_a_binarized_one_round_trips():
    old = mnv2_config().to_dict()
    del old["binarize"]  # written before the field existed
    assert ModelConfig.from_dict(old).binarize is None
    config = ModelConfig.from_dict(mnv2_config(binarize="bireal").to_dict())
    assert len(binary_convs(build_model(config))) == 17


def test_mac_report_counts_binary_layers_as_binary_ops():
    real = ConvLayer("a", "od", "b", 8, 16, (4, 4), (1, 1), (1, 1))
    binary = replace(real, name="c", binary=True)
    totals = build_report([LayerCount(real, zeros=32), LayerCount(binary, zeros=32)])["totals"]
    # each layer: 8*4*4 inputs * 16 outputs = 2048 MACs; the binary one's are binary ops
    assert totals["mac"] == 2048 and totals["mac_star"] == (128 - 32) * 16
    assert totals["binary_ops"] == 2048
    assert binary_figures(totals)["gmac_equivalent"] == pytest.approx((2048 + 2048 / 64) / 1e9)


def test_mac_report_of_a_binarized_model():
    config = mnv2_config(binarize="bireal")
    report = mac_report(build_model(config).eval(), torch.zeros(1, 3, 64, 64))
    dense = mac_report(build_model(replace(config, binarize=None)).eval(), torch.zeros(1, 3, 64, 64))
    rows = {r["name"]: r for r in report["networks"]["od"]["layers"]}
    head = rows["backbone.head_conv.0"]  # 320 x 2x2 inputs -> 1280 channels
    assert head["binary"] and head["mac"] == 0 and head["binary_ops"] == 320 * 2 * 2 * 1280
    assert report["totals"]["mac"] + report["totals"]["binary_ops"] == dense["totals"]["mac"]


def test_information_bottleneck_loss():
    features = [torch.full((1, 2, 2, 2), 2.0), torch.tensor([1.0, -3.0]).view(1, 2, 1, 1)]
    assert float(information_bottleneck_loss(features)) == pytest.approx((4.0 + 5.0) / 2)


def test_sparse_object_prior_loss():
    scores = torch.tensor([0.5, 0.5, 0.9, 0.3, 0.1], requires_grad=True)
    image = torch.tensor([0, 0, 1, 2, 2])
    loss = sparse_object_prior_loss(scores, image, num_images=4)
    # image 0: p = (1/2, 1/2) -> ln 2; image 1: one box -> 0; image 2: (3/4, 1/4); image 3: none -> 0
    h2 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert float(loss.detach()) == pytest.approx((math.log(2) + h2) / 4)
    loss.backward()
    assert torch.isfinite(scores.grad).all()
    assert float(scores.grad[2]) == pytest.approx(0.0, abs=1e-7)  # a lone detection has no entropy
    assert float(scores.grad[3]) < 0 < float(scores.grad[4])  # sparser: the strong box up, the weak down


def test_binarize_options_are_validated():
    check_binarize("bidet", "vanilla", "step", "bireal")
    with pytest.raises(ValueError, match="--schedule step"):
        check_binarize("bidet", "vanilla", "cosine", "bireal")
    with pytest.raises(ValueError, match="--mode vanilla"):
        check_binarize("plain", "e2e", "step", "bireal")
    with pytest.raises(ValueError, match="must be one of"):
        check_binarize("xnor", "vanilla", "step", "bireal")


def test_export_gives_binary_convolutions_with_parity(tmp_path):
    ov = pytest.importorskip("openvino")
    from babo_edge.export.onnx_export import export_onnx
    from babo_edge.export.openvino_ir import compile_fp32, convert

    torch.manual_seed(0)
    model = build_model(mnv2_config(binarize="bireal")).eval()
    path = export_onnx(model, (64, 64), tmp_path / "m.onnx", raw=True)
    ir = convert(path)
    packed = [op for op in ir.get_ops() if op.get_type_name() == "BinaryConvolution"]
    assert len(packed) == 17 and all(op.input(1).get_element_type() == ov.Type.u1 for op in packed)  # 1-bit weights
    compiled = compile_fp32(ir)
    types = Counter(op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ops())
    assert types["BinaryConvolution"] == 17
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        eager = model(x)
    result = compiled(x.numpy())
    assert np.abs(result[0] - eager.cls_logits.numpy()).max() < 1e-4
    assert np.abs(result[1] - eager.box_deltas.numpy()).max() < 1e-4


def test_the_exported_sign_switches_at_zero_exactly_as_the_eager_one(tmp_path):
    pytest.importorskip("openvino")
    from babo_edge.export.openvino_ir import compile_fp32, convert

    conv = BinaryConv2d(16, 1, 1, bias=False).eval()
    with torch.no_grad():
        conv.weight.fill_(1.0)
    # no denormals (the CPU flushes them), nor |x| < ~1e-11, which ties to -1 (models.binary.FQ_STEP)
    values = torch.tensor([-1e-6, -1e-20, 0.0, 1e-10, 1e-7, 3e-7, 5e-7, 6e-7, 1.0])
    x = values.view(1, 1, 1, -1).repeat(1, 16, 1, 1)
    path = tmp_path / "sign.onnx"
    torch.onnx.export(conv, x, path, dynamo=False)
    compiled = compile_fp32(convert(path))
    with torch.no_grad():
        eager = conv(x).flatten().tolist()
    assert eager == [-16, -16, -16, 16, 16, 16, 16, 16, 16]
    assert compiled(x.numpy())[0].flatten().tolist() == eager


def test_parameter_bits_count_binary_weights_at_one_bit():
    model = nn.Sequential(BinaryConv2d(4, 8, 3, bias=False), nn.BatchNorm2d(8))
    # 8*4*3*3 = 288 weights at 1 bit + 8 alphas at 32 bits; BN: 16 parameters at 32 bits
    assert parameter_bits(model) == 288 + 8 * 32 + 16 * 32


def test_the_int8_ir_of_a_binarized_model_compiles_on_cpu_with_its_binary_convolutions(tmp_path):
    """On bf16 CPUs (AVX-512 bf16, AMX) the plugin's default precision cannot feed a BinaryConvolution
    in INT8; the runtime's properties keep the real-valued part in f32 there."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from babo_edge.export.onnx_export import export_onnx
    from babo_edge.export.openvino_ir import convert
    from babo_edge.export.pipeline import compile_cpu
    from babo_edge.export.quantize import quantize_int8
    from babo_edge.runtime.detector import binary_safe_properties

    torch.manual_seed(0)
    model = build_model(mnv2_config(binarize="bireal")).eval()
    ir = convert(export_onnx(model, (64, 64), tmp_path / "m.onnx"))
    rng = np.random.default_rng(0)
    int8 = quantize_int8(ir, [rng.random((1, 3, 64, 64), dtype=np.float32) * 255 for _ in range(4)], "performance", 4).model
    assert binary_safe_properties(int8, "CPU", {}) == {"INFERENCE_PRECISION_HINT": "f32"}
    assert binary_safe_properties(int8, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})["INFERENCE_PRECISION_HINT"] == "bf16"
    assert binary_safe_properties(ir, "GPU", {}) == {}
    compiled = compile_cpu(int8)
    types = Counter(op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ops())
    assert types["BinaryConvolution"] == 17
    assert np.isfinite(compiled(rng.random((1, 3, 64, 64), dtype=np.float32) * 255)[0]).all()


def test_int8_signs_switch_at_zero_after_the_plugin_folds_a_bias_into_them(tmp_path):
    """The INT8 CPU pipeline folds the per-channel Add in front of a sign into the sign's
    FakeQuantize bounds; the bounds must survive it (models.binary.FQ_STEP). Every sign input
    here is a bias of +-3 plus at most 0.16, so the INT8 IR's binary output is exact."""
    nncf = pytest.importorskip("nncf")
    from babo_edge.export.mask_graph import sign_input_nodes
    from babo_edge.export.openvino_ir import compile_fp32, convert
    from babo_edge.export.pipeline import compile_cpu

    torch.manual_seed(0)
    first, second = BinaryConv2d(16, 16, 1, bias=True), BinaryConv2d(16, 8, 1, bias=False)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), first, second).eval()
    with torch.no_grad():
        first.weight.copy_(0.01 * torch.randn_like(first.weight).sign())  # alpha 0.01: |conv| <= 0.16
        first.bias.copy_(3.0 * torch.randn(16).sign())
    x = torch.rand(1, 3, 16, 16) * 255
    torch.onnx.export(model, x, tmp_path / "m.onnx", dynamo=False)
    ir = convert(tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    scope = nncf.IgnoredScope(names=[node.get_friendly_name() for node in sign_input_nodes(ir)])  # as the export's
    int8 = nncf.quantize(ir, nncf.Dataset([rng.random((1, 3, 16, 16), dtype=np.float32) * 255 for _ in range(4)]),
                         subset_size=4, ignored_scope=scope)
    assert any(op.get_type_name() == "FakeQuantize" and op.get_attributes()["levels"] == 256 for op in int8.get_ops())
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(compile_fp32(ir)(x.numpy())[0], expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(compile_cpu(int8)(x.numpy())[0], expected, rtol=0, atol=1e-6)


def test_int8_keeps_the_inputs_of_every_binary_sign_in_float(tmp_path):
    """An 8-bit quantizer in front of a sign maps every value in (0, step/2) to 0, whose sign is
    -1; the ignored scope keeps the ops a sign reads float, and the check catches a scope that
    does not."""
    pytest.importorskip("nncf")
    import nncf

    from babo_edge.export.mask_graph import quantizers_before_signs, sign_input_nodes
    from babo_edge.export.onnx_export import export_onnx
    from babo_edge.export.openvino_ir import convert
    from babo_edge.export.quantize import SignQuantizedError, check_signs_exact, quantize_int8

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="vgg16-bn-ssd300", width=0.25, num_classes=2, omg=False,
                                    input_size=(300, 300), binarize="bireal")).eval()
    ir = convert(export_onnx(model, (300, 300), tmp_path / "m.onnx"))
    signs = [op for op in ir.get_ops() if op.get_type_name() == "FakeQuantize"]
    assert len(signs) == 14 and {op.get_type_name() for op in sign_input_nodes(ir)} >= {"Add", "MaxPool", "Pad"}
    rng = np.random.default_rng(0)
    images = [rng.random((1, 3, 300, 300), dtype=np.float32) * 255 for _ in range(2)]
    int8 = quantize_int8(ir, images, "performance", 2).model
    quantizers = [op for op in int8.get_ops() if op.get_type_name() == "FakeQuantize"
                  and op.get_attributes()["levels"] > 2]
    assert quantizers and quantizers_before_signs(int8) == []  # the stem and heads are INT8, the trunk's signs exact
    unprotected = quantize_int8(ir, images, "performance", 2, scope=nncf.IgnoredScope()).model
    assert quantizers_before_signs(unprotected)
    with pytest.raises(SignQuantizedError, match="in front of a binary sign"):
        check_signs_exact(unprotected)


def test_sign_forced_parity_pairs_every_binary_conv_with_the_irs_sign_input_and_catches_a_shifted_one(tmp_path):
    """The PyTorch model reads the IR's sign inputs, so both take the same signs and the same
    detections; each layer's own inputs are compared apart, so an IR whose first sign input is
    off by 1% of its range fails there alone, while with their own signs the detections differ."""
    pytest.importorskip("openvino")
    from openvino import opset13 as ops

    from babo_edge.export.mask_graph import sign_inputs
    from babo_edge.export.onnx_export import export_onnx
    from babo_edge.export.openvino_ir import compile_fp32, convert
    from babo_edge.export.parity import FP32_TOLERANCE, SIGN_INPUT, compare, sign_forced_runners, torch_runner

    torch.manual_seed(0)
    model = build_model(mnv2_config(binarize="bireal")).eval()
    ir = convert(export_onnx(model, (64, 64), tmp_path / "m.onnx"))
    rng = np.random.default_rng(0)
    images = [rng.random((1, 3, 64, 64), dtype=np.float32) * 255 for _ in range(2)]
    read: list[int] = []
    hooks = [conv.register_forward_pre_hook(lambda m, args: read.append(args[0].numel())) for _, conv in binary_convs(model)]
    with torch.no_grad():
        model(torch.from_numpy(images[0]))
    for hook in hooks:
        hook.remove()

    reference, candidate = sign_forced_runners(model, ir, compile_fp32)
    parity = compare(reference, candidate, images)
    assert len(read) == 17 and parity.sign_inputs == 2 * sum(read)
    assert parity.violations(FP32_TOLERANCE) == [] and parity.reference_detections > 0
    assert parity.max_sign_input_diff > 0  # the values really are the IR's and PyTorch's own

    first = sign_inputs(ir)[0]
    scale = float(np.abs(candidate(images[0])[f"{SIGN_INPUT}0"]).max())
    shifted = ops.add(first, ops.constant(np.float32(0.01 * scale)))
    for target in [t for t in first.get_target_inputs() if t.get_node().get_type_name() == "FakeQuantize"]:
        target.replace_source_output(shifted.output(0))
    reference, candidate = sign_forced_runners(model, ir, compile_fp32)
    forced = compare(reference, candidate, images).violations(FP32_TOLERANCE)
    assert len(forced) == 1 and forced[0].startswith("binary sign inputs differ")  # the detections agree
    free = compare(torch_runner(model), candidate, images).violations(FP32_TOLERANCE)
    assert free and not any("sign" in problem for problem in free)  # own signs: other detections
