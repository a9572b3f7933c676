"""MAC/MAC* from forward hooks: agreement with independent counts and the paper's Table 4."""
import json

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from babo_edge.models.builders import ModelConfig, build_model
from babo_edge.models.profiling import block_of, mac_report, profile
from babo_edge.models import report as report_cli


def torch_conv_macs(module: nn.Module, x: torch.Tensor) -> float:
    """Independent count: torch's own FLOP counter (2 FLOPs per MAC, output-based). Equal to
    Eq. 3 for 'same'-padded convs on sizes divisible by every stride, as at 512 and 256."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return sum(v for op, v in counter.get_flop_counts()["Global"].items()
               if "convolution" in str(op)) / 2


@pytest.mark.parametrize("width", [1.0, 0.5])
def test_detector_mac_equals_torch_flop_counter(width):
    model = build_model(ModelConfig(width=width, input_size=(512, 512), omg=False)).eval()
    x = torch.zeros(1, 3, 512, 512)
    report = mac_report(model, x)
    assert report["networks"]["od"]["totals"]["mac"] == pytest.approx(torch_conv_macs(model.detector, x), rel=1e-9)


def test_omg_mac_equals_torch_flop_counter():
    model = build_model(ModelConfig(input_size=(256, 256), omg_size=(256, 256))).eval()
    report = mac_report(model, torch.zeros(1, 3, 256, 256))
    assert report["networks"]["omg"]["totals"]["mac"] == pytest.approx(
        torch_conv_macs(model.omg, torch.zeros(1, 3, 256, 256)), rel=1e-9)


def test_zero_counts_are_per_image_and_match_direct_count():
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=3, input_size=(128, 128), omg=False)).eval()
    images = torch.rand(2, 3, 128, 128) * 255
    mask = torch.zeros(2, 1, 128, 128)
    mask[0, :, :64] = 1  # image 0: top half foreground; image 1: all background
    result = profile(model, images, mask)
    first0, first1 = result.counts[0][0], result.counts[1][0]
    assert first0.layer.name == "backbone.stem.0" and first0.layer.input_hw == (128, 128)
    assert first0.zeros == 3 * 64 * 128  # the masked half of the normalised image
    assert first1.zeros == 3 * 128 * 128
    assert all(c.zeros == c.layer.input_numel for c in result.counts[1])  # everything blacked out
    assert result.fg_ratios == [0.5, 0.0]
    report = mac_report(model, images, mask)
    assert report["images"] == 2 and report["fg_ratio"] == 0.25
    mac = report["networks"]["od"]["totals"]["mac"]
    assert report["networks"]["od"]["totals"]["mac_star"] < 0.6 * mac


def test_mac_star_of_masked_image_matches_eq4_per_layer():
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=3, input_size=(96, 96), omg=False)).eval()
    images = torch.rand(1, 3, 96, 96) * 255
    mask = torch.zeros(1, 1, 96, 96)
    mask[..., 10:50, 30:90] = 1
    # Independent count: exact zeros at every conv input, seen after the black-out hooks.
    zeros = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, n=n: zeros.__setitem__(n, int((args[0] == 0).sum())))
               for n, m in model.detector.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(images, mask)
    for h in handles:
        h.remove()
    rows = mac_report(model, images, mask)["networks"]["od"]["layers"]
    assert [row["name"] for row in rows] == list(zeros)
    for row in rows:
        c_in, h, w = row["input_shape"]
        kh, kw = row["kernel"]
        sh, sw = row["stride"]
        eq4 = (c_in * h * w - zeros[row["name"]]) * row["out_channels"] / row["groups"] * kh * kw / (sh * sw)
        assert row["zeros"] == zeros[row["name"]]
        assert row["mac_star"] == pytest.approx(eq4, rel=1e-12), row["name"]
    assert sum(row["mac_star"] for row in rows) < 0.7 * sum(row["mac"] for row in rows)


def test_block_names():
    assert block_of("backbone.stages.3.1.expand.0", 2) == "backbone.stages.3"
    assert block_of("backbone.stem.0", 2) == "backbone.stem"
    assert block_of("head.cls.0.0.0", 2) == "head.cls.0"
    assert block_of("feature_fusion.low_depthwise.0", 1) == "feature_fusion"


# The BABO paper's Table 4 GMAC column must be reproduced within 3%.
@pytest.mark.parametrize("label, overrides, paper, source", report_cli.PAPER_GMAC[:6])
def test_paper_table4_gmac_within_3_percent(label, overrides, paper, source):
    assert source == "Table 4"
    gmac = sum(report_cli.gmac_of(ModelConfig(**overrides)).values())
    assert gmac == pytest.approx(paper, rel=0.03), label


def test_report_cli_writes_schema_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    code = report_cli.main(["--input-size", "160", "--omg-size", "96", "--num-classes", "3",
                            "--json", str(out), "--blocks-only"])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["schema"] == "babo-edge/mac-report" and set(data["networks"]) == {"omg", "od"}
    assert data["meta"]["config"]["input_size"] == [160, 160]
    assert data["networks"]["omg"]["layers"][0]["input_shape"] == [3, 96, 96]
    assert "total (OMG + OD)" in capsys.readouterr().out


def test_report_cli_bad_checkpoint_is_one_line_error(tmp_path, capsys):
    assert report_cli.main(["--ckpt", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no such checkpoint file" in err and "\n" not in err


def test_report_cli_lists_every_architecture():
    from babo_edge.models.builders import DETECTORS
    assert report_cli.ARCHITECTURES == tuple(DETECTORS)
