"""Pruning (models/pruning.py): exact counts, rebuild from the config, export parity, the
weight-zero MAC* count on hand-computed layers and the --prune validation."""
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from torch import nn

from babo_edge.models import pruning
from babo_edge.models.accounting import ConvLayer, LayerCount, ReportAccumulator, build_report
from babo_edge.models.builders import ModelConfig, build_model
from babo_edge.models.checkpoint import load_model, save_checkpoint
from babo_edge.models.profiling import weight_mac_star
from babo_edge.train.options import PRUNE_SCOPES, PruneSpec

CONFIG = ModelConfig(num_classes=3, input_size=(128, 128), omg_size=(64, 64), width=0.5)
NAMES = ["a", "b", "c"]


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model(CONFIG).eval()


def test_scopes_match_the_options():
    assert pruning.SCOPES == PRUNE_SCOPES


@pytest.mark.parametrize("scope", PRUNE_SCOPES)
def test_magnitude_zeros_exactly_the_ratio_in_scope_and_nothing_else(model, scope):
    omg_before = {k: v.clone() for k, v in model.omg.state_dict().items()}
    others = [c for c in pruning.scoped_convs(model, "all") if c not in pruning.scoped_convs(model, scope)]
    others_before = [c.weight.clone() for c in others]
    convs = pruning.scoped_convs(model, scope)
    total = sum(c.weight.numel() for c in convs)
    hooks = [(len(c._forward_pre_hooks), len(c._forward_hooks)) for c in convs]
    pruning.prune_magnitude(model, 0.3, scope)
    assert sum(int((c.weight == 0).sum()) for c in convs) == round(0.3 * total)
    kept = torch.cat([c.weight.abs().flatten() for c in convs])
    assert kept[kept > 0].min() >= kept.sort().values[round(0.3 * total) - 1]  # the smallest went
    assert all(torch.equal(c.weight, w) for c, w in zip(others, others_before))
    assert all(torch.equal(v, omg_before[k]) for k, v in model.omg.state_dict().items())
    assert [(len(c._forward_pre_hooks), len(c._forward_hooks)) for c in convs] == hooks  # no new hooks
    assert all(type(c.weight) is nn.Parameter and not hasattr(c, "weight_orig") for c in convs)
    assert pruning.weight_sparsity(model, scope) == pytest.approx(round(0.3 * total) / total)


def test_sparsity_ramp():
    assert [pruning.sparsity_at(s, 10, 0.8) for s in (0, 10, 20)] == [0.0, 0.8, 0.8]
    assert pruning.sparsity_at(5, 10, 0.8) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert pruning.sparsity_at(0, 0, 0.5) == 0.5  # no ramp: one-shot


def _lowest_norm_kept(readers: list[torch.Tensor], channels: int) -> torch.Tensor:
    """Independent of pruning.py: the channels whose columns in the reading 1x1 convs have
    the largest L2 norm together, half of them, in index order."""
    norms = torch.stack([(w[:, :, 0, 0] ** 2).sum(0) for w in readers]).sum(0).sqrt()
    return torch.argsort(norms, descending=True)[:channels // 2].sort().values


def test_channels_removes_the_lowest_norm_hidden_and_stream_channels(model):
    backbone = model.detector.backbone
    block = backbone.stages[2][1]
    hidden = _lowest_norm_kept([block.project[0].weight], block.hidden_channels)
    # stage 2's output (32 wide at width 0.5) is read by its blocks 1-2 and stage 3's first block
    readers = [backbone.stages[2][1].expand[0], backbone.stages[2][2].expand[0], backbone.stages[3][0].expand[0]]
    stream = _lowest_norm_kept([r.weight for r in readers], block.out_channels)
    project = block.project[0].weight[stream][:, hidden].clone()
    depthwise = block.depthwise[0].weight[hidden].clone()
    expand = block.expand[0].weight[hidden][:, stream].clone()
    pruned, config = pruning.prune_channels(model, CONFIG, 0.5)
    new = pruned.detector.backbone.stages[2][1]
    assert new.hidden_channels == block.hidden_channels // 2 and new.out_channels == block.out_channels // 2
    assert torch.equal(new.project[0].weight, project) and torch.equal(new.depthwise[0].weight, depthwise)
    assert torch.equal(new.expand[0].weight, expand)
    published = pruning.published_widths(model)
    for part in ("backbone", "stages", "head_conv", "extras"):
        assert config.pruned_widths[part] == [pruning.kept_channels(h, 0.5) for h in published[part]]
    tap = pruned.detector.backbone.tap_channels[0]
    assert tap == config.pruned_widths["backbone"][13]  # stages[5][0]: head level 0 shrinks with it
    assert pruned.detector.head.cls[0][1].in_channels == tap and pruned.detector.head.box[0][0][0].groups == tap
    shortcuts = [b.use_residual for s in model.detector.backbone.stages for b in s]
    assert [b.use_residual for s in pruned.detector.backbone.stages for b in s] == shortcuts
    x = torch.rand(1, 3, *CONFIG.input_size) * 255
    assert pruned(x).cls_logits.shape == model(x).cls_logits.shape
    assert sum(p.numel() for p in pruned.detector.backbone.stages.parameters()) < 0.3 * sum(
        p.numel() for p in model.detector.backbone.stages.parameters())


def test_channels_prunes_the_final_conv_with_the_head_level_and_extra_reading_it(model):
    det = model.detector
    readers = [det.neck.levels[0][0][0], det.head.cls[1][1], det.head.box[1][1]]
    kept = _lowest_norm_kept([r.weight for r in readers], det.backbone.last_channels)
    head_conv = det.backbone.head_conv[0]
    stage6 = _lowest_norm_kept([head_conv.weight], head_conv.in_channels)  # stage 6's output, read by it alone
    head_conv, neck_in = head_conv.weight[kept][:, stage6].clone(), readers[0].weight[:, kept].clone()
    cls_dw = det.head.cls[1][0][0].weight[kept].clone()
    pruned, config = pruning.prune_channels(model, CONFIG, 0.5, "backbone")
    new = pruned.detector
    assert config.pruned_widths["head_conv"] == [det.backbone.last_channels // 2] == [new.backbone.tap_channels[1]]
    assert new.neck.levels[0][0][0].weight.shape[0] == det.neck.levels[0][0][0].weight.shape[0]  # scope: backbone
    assert torch.equal(new.backbone.head_conv[0].weight, head_conv)
    assert torch.equal(new.neck.levels[0][0][0].weight, neck_in) and torch.equal(new.head.cls[1][0][0].weight, cls_dw)
    assert new.head.box[1][1].in_channels == new.head.box[1][0][0].groups == len(kept)


def test_stage_widths_keep_the_published_shortcuts():
    """Pruned widths that happen to equal the block's input must not add a shortcut."""
    from babo_edge.models.mobilenetv2 import MobileNetV2

    published = MobileNetV2(0.5)
    hidden = [b.hidden_channels for s in published.stages for b in s]
    narrow = MobileNetV2(0.5, [8] + hidden[1:], stage_widths=[8, 16, 16, 32, 48, 80, 160])
    assert narrow.stages[0][0].depthwise[0].groups == narrow.stages[0][0].project[0].out_channels == 8
    assert [b.use_residual for s in narrow.stages for b in s] == [b.use_residual for s in published.stages for b in s]
    assert not narrow.stages[0][0].use_residual
    # hidden widths alone (checkpoints from before stage pruning): the equal-width rule they were
    # trained with, a shortcut around block 0 once the stem is pruned to its output width
    assert MobileNetV2(0.5, [8] + hidden[1:]).stages[0][0].use_residual


def test_channels_prunes_the_stem_as_the_t1_blocks_expansion(model):
    """Block 0 has no expansion conv: the stem's output channels are its hidden channels."""
    backbone, block = model.detector.backbone, model.detector.backbone.stages[0][0]
    norms = block.project[0].weight.transpose(0, 1).flatten(1).norm(dim=1)
    kept = pruning.kept_channels(block.hidden_channels, 0.5)
    expected = torch.argsort(norms, descending=True)[:kept].sort().values
    pruned, config = pruning.prune_channels(model, CONFIG, 0.5)
    new_backbone = pruned.detector.backbone
    assert config.pruned_widths["backbone"][0] == kept == block.hidden_channels // 2
    assert new_backbone.stem[0].out_channels == kept == new_backbone.stages[0][0].depthwise[0].groups
    assert torch.equal(new_backbone.stem[0].weight, backbone.stem[0].weight[expected])
    assert torch.equal(new_backbone.stem[1].running_var, backbone.stem[1].running_var[expected])
    assert torch.equal(new_backbone.stages[0][0].project[0].weight, block.project[0].weight[:, expected])
    assert isinstance(new_backbone.stages[0][0].expand, torch.nn.Identity)


def test_channels_scope_backbone_keeps_extras(model):
    _, config = pruning.prune_channels(model, CONFIG, 0.5, "backbone")
    assert config.pruned_widths["extras"] == pruning.published_widths(model)["extras"]


def test_channels_refuses_other_architectures(model):
    with pytest.raises(ValueError, match="mnv2-ssdlite only"):
        pruning.prune_channels(model, replace(CONFIG, arch="vgg16-ssd512"), 0.5)


def test_pruned_checkpoint_round_trips(model, tmp_path):
    pruned, config = pruning.prune_channels(model, CONFIG, 0.5)
    pruning.prune_magnitude(pruned, 0.5)
    save_checkpoint(tmp_path / "p.pt", pruned, config, NAMES)
    loaded, ckpt = load_model(tmp_path / "p.pt")
    assert ckpt.config == config and ModelConfig.from_dict(config.to_dict()) == config
    x = torch.rand(2, 3, *CONFIG.input_size) * 255
    assert torch.equal(loaded.eval()(x).cls_logits, pruned.eval()(x).cls_logits)


def test_old_configs_load_with_published_widths():
    old = CONFIG.to_dict()
    del old["pruned_widths"]
    assert ModelConfig.from_dict(old).pruned_widths is None


@pytest.mark.slow
def test_pruned_checkpoint_exports_with_to_ir_alone_and_with_parity(tiny_dataset, tmp_path):
    """`python export/to_ir.py ckpt.pt` rebuilds the pruned widths from the checkpoint; the
    export's own parity checks (ONNX, FP32, INT8) pass and the IR metadata carries the widths."""
    import json

    import openvino as ov

    from babo_edge.export.report import REPORT_FILE
    from babo_edge.export.to_ir import main as to_ir_main
    from babo_edge.runtime.detector import parse_model_info, read_model_info

    torch.manual_seed(0)
    config = replace(CONFIG, num_classes=6, omg=False, omg_size=None)
    pruned, config = pruning.prune_channels(build_model(config).eval(), config, 0.5)
    pruning.prune_magnitude(pruned, 0.5)
    from babo_edge.calibration.coco import CocoDetection
    from babo_edge.calibration.synthetic import split_files

    names = CocoDetection(*split_files(tiny_dataset, "val")).class_names
    checkpoint = save_checkpoint(tmp_path / "pruned.pt", pruned, config, names)
    out = tmp_path / "export"
    assert to_ir_main([str(checkpoint), "--output", str(out), "--calib", str(tiny_dataset), "--val", str(tiny_dataset),
                       "--subset-size", "4", "--parity-images", "2", "--precision", "fp32,int8"]) == 0
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["failures"] == {} and set(report["parity"]) >= {"onnx", "fp32", "int8"}
    info = parse_model_info(read_model_info(ov.Core().read_model(str(out / "INT8" / "model.xml"))), "int8")
    assert info.model_config["pruned_widths"] == config.pruned_widths


# --- MAC* with weight zeros --------------------------------------------------------------


def test_weight_mac_star_hand_computed():
    conv = nn.Conv2d(1, 1, 2, bias=False)  # 2x2 kernel, no padding, on a 2x3 input: 2 outputs
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 0.0], [2.0, 3.0]]]]))
    x = torch.tensor([[[[1.0, 0.0, 4.0], [0.0, 5.0, 6.0]]]])
    # output (0,0): inputs [1,0;0,5] x weights [1,0;2,3] -> pairs (1,1) and (5,3): 2
    # output (0,1): inputs [0,4;5,6] x weights [1,0;2,3] -> pairs (5,2) and (6,3): 2
    assert weight_mac_star(conv, x).tolist() == [4.0]
    depthwise = nn.Conv2d(2, 2, 3, padding=1, groups=2, bias=False)
    with torch.no_grad():
        depthwise.weight.zero_()
        depthwise.weight[0, 0, 1, 1] = 1.0  # channel 0: only the centre tap
    ones = torch.ones(1, 2, 4, 4)
    assert weight_mac_star(depthwise, ones).tolist() == [16.0]  # 16 outputs x 1 tap; channel 1 all zero


def test_weight_counts_in_the_report():
    layer = ConvLayer("c", "od", "b", 1, 1, (2, 3), (2, 2), (1, 1))
    acc = ReportAccumulator()
    acc.add([LayerCount(layer, 2, 4.0)])
    acc.add([LayerCount(layer, 4, 2.0)])
    report = acc.report()
    assert report["totals"]["mac_star_w"] == 3.0
    assert report["totals"]["mac_star"] == (6 - 3) * 4  # Eq. 4 with the mean zeros
    assert build_report([LayerCount(layer, 2)])["totals"]["mac_star_w"] is None  # not measured


# --- --prune validation ------------------------------------------------------------------


def test_prune_spec_parses():
    assert PruneSpec.parse("magnitude:0.5") == PruneSpec("magnitude", 0.5, "all")
    assert PruneSpec.parse("channels:0.3:backbone") == PruneSpec("channels", 0.3, "backbone")


@pytest.mark.parametrize("text, message", [
    ("magnitude:1.5", "ratio must be in [0, 1)"),
    ("foo:0.3", "method must be one of"),
    ("channels:abc", "is not a number"),
    ("channels:0.5:neck", "scope must be one of"),
    ("channels", "expected METHOD:RATIO"),
])
def test_bad_prune_values_give_one_line_errors(text, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        PruneSpec.parse(text)
    run = subprocess.run([sys.executable, "-m", "babo_edge.train.train", "--prune", text],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and message in run.stderr
    assert run.stderr.strip().splitlines()[-1].count("\n") == 0 and "Traceback" not in run.stderr


# --- fine-tuning under --prune -----------------------------------------------------------


def tiny_training(tiny_dataset, tmp_path, prune):
    from babo_edge.train.engine import TrainConfig

    model = ModelConfig(num_classes=6, input_size=(128, 128), width=0.5, omg=False, omg_size=None)
    return TrainConfig(mode="vanilla", model=model, data=str(tiny_dataset), epochs=1, batch_size=4,
                       optimizer="adam", lr=1e-3, warmup_iters=0, workers=0, out=str(tmp_path / "run"),
                       prune=prune, prune_ramp=0.5, prune_every=1)


def test_magnitude_fine_tuning_ends_at_the_target_sparsity(tiny_dataset, tmp_path):
    from babo_edge.train.engine import train

    last = train(tiny_training(tiny_dataset, tmp_path, "magnitude:0.6:heads"), progress=False)
    model, _ = load_model(last)
    convs = pruning.scoped_convs(model, "heads")
    total = sum(c.weight.numel() for c in convs)
    assert sum(int((c.weight == 0).sum()) for c in convs) == round(0.6 * total)  # after the last Adam step
    assert pruning.weight_sparsity(model, "backbone") == 0


def test_channel_fine_tuning_saves_a_rebuildable_checkpoint(tiny_dataset, tmp_path):
    from babo_edge.train.engine import train

    last = train(tiny_training(tiny_dataset, tmp_path, "channels:0.5:backbone"), progress=False)
    model, ckpt = load_model(last)  # build_model(config) with the pruned widths, then the weights
    assert ckpt.config.pruned_widths["backbone"][1] == pruning.kept_channels(48, 0.5)  # width 0.5: 8 * 6
    assert model.detector.backbone.stages[1][0].hidden_channels == ckpt.config.pruned_widths["backbone"][1]


def test_interleaved_rounds_rotate_the_model_order():
    """The A/B timing loop of benchmarks/ab_latency.py and pruning_table.py (no time asserted)."""
    from babo_edge.runtime.timing import WARMUP_RUNS, interleaved_medians

    order = []
    calls = [lambda item, m=m: order.append((m, item)) for m in range(3)]
    medians = interleaved_medians(calls, ["a", "b"], rounds=3, calls_per_round=2)
    assert medians.shape == (3, 3)
    timed = [m for m, _ in order[3 * WARMUP_RUNS:]][::2]  # one entry per (round, model)
    assert timed == [0, 1, 2, 1, 2, 0, 2, 0, 1]
    assert [item for _, item in order[3 * WARMUP_RUNS:3 * WARMUP_RUNS + 2]] == ["a", "b"]


def test_sweep_table_has_the_papers_layout():
    """benchmarks/pruning_table.py --sweep: one block per scope, a column per measured sparsity,
    sizes and weights relative to the unpruned cell."""
    from benchmarks.pruning_table import Row, format_sweep, ratios

    def row(scope, sparsity, ap50, gzip_bytes, nonzero):
        kind = "unpruned" if sparsity == 0 else "one-shot"
        return Row(name="x", kind=kind, method="magnitude", scope=scope, sparsity=sparsity, nonzero_weights=nonzero,
                   ap=ap50 / 2, ap50=ap50, bin_bytes=3_000_000, gzip_bytes=gzip_bytes, gmac=0.4, gmac_star=0.3,
                   gmac_star_w=0.3 * nonzero / 100)
    base = row("-", 0.0, 42.0, 3_000_000, 100)
    table = format_sweep({"backbone": [base, row("backbone", 0.5, 40.0, 2_500_000, 65)],
                          "all": [base, row("all", 0.9, 1.0, 800_000, 10)]}).splitlines()
    assert table[0] == "**pruned in the backbone** (magnitude, one-shot)"
    assert table[2] == "| | 0% | 50% |" and table[4] == "| AP50 | 42.0 | 40.0 |"
    assert "| INT8 gzip MB | 3.00 | 2.50 |" in table and "| non-zero weights x | 1.00 | 0.65 |" in table
    second = table.index("**pruned in the backbone and the heads** (magnitude, one-shot)")
    assert table[second + 2] == "| | 0% | 90% |" and "| GMAC* w/ weight zeros | 0.300 | 0.030 |" in table[second:]
    assert ratios("0.1,0.5") == (0.1, 0.5)
    for bad in ("0.5,x", "0,0.5", "1.5", ""):
        with pytest.raises(Exception, match="ratio"):
            ratios(bad)
