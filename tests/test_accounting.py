"""MAC (Eq. 3) and MAC* (Eq. 4) on hand-computed layers, and the report schema."""
import subprocess
import sys

import pytest

from babo_edge.models.accounting import (ConvLayer, LayerCount, ReportAccumulator, build_report, conv_macs,
                               format_report)


def layer(cin, cout, hw, k=3, s=1, g=1, name="conv", network="od", block="b"):
    return ConvLayer(name, network, block, cin, cout, hw, (k, k), (s, s), g)


@pytest.mark.parametrize("conv, expected", [
    # plain 3x3: 8*8 inputs * 3 channels, each feeding 16 outputs through 9 taps
    (layer(3, 16, (8, 8)), 8 * 8 * 3 * 16 * 9),
    # stride 2 divides by s*s (an output every 2x2 inputs)
    (layer(3, 16, (8, 8), s=2), 8 * 8 * 3 * 16 * 9 / 4),
    # depthwise: every input feeds only its own channel's output (c_out / groups = 1)
    (layer(32, 32, (10, 10), g=32), 10 * 10 * 32 * 1 * 9),
    # depthwise stride 2 on odd size: the paper's formula is input-based, padding omitted
    (layer(32, 32, (7, 7), s=2, g=32), 7 * 7 * 32 * 9 / 4),
    # grouped (ResNeXt-like): 4 groups of 16 -> 8
    (layer(64, 32, (5, 5), g=4), 5 * 5 * 64 * 8 * 9),
    # 1x1 pointwise
    (layer(96, 576, (32, 32), k=1), 32 * 32 * 96 * 576),
])
def test_mac_matches_hand_count(conv, expected):
    assert conv_macs(conv) == pytest.approx(expected, rel=0, abs=1e-9)
    assert conv_macs(conv, zeros=0) == conv_macs(conv)  # MAC* = MAC without zeros
    assert conv_macs(conv, zeros=conv.input_numel) == 0  # all-zero input costs nothing


def test_mac_star_is_linear_in_nonzeros():
    conv = layer(4, 8, (6, 6), s=2)
    zeros = 37
    assert conv_macs(conv, zeros) == pytest.approx((6 * 6 * 4 - zeros) * 8 * 9 / 4)


def test_invalid_layers_are_refused():
    with pytest.raises(ValueError, match="groups"):
        conv_macs(layer(30, 32, (4, 4), g=4))
    with pytest.raises(ValueError, match="zeros"):
        conv_macs(layer(3, 8, (4, 4)), zeros=3 * 16 + 1)


def test_report_totals_blocks_and_networks():
    a = LayerCount(layer(3, 8, (4, 4), name="a", block="b1", network="omg"), zeros=12)
    b = LayerCount(layer(8, 8, (4, 4), g=8, name="b", block="b1"), zeros=0)
    c = LayerCount(layer(8, 16, (2, 2), k=1, name="c", block="b2"), zeros=32)
    report = build_report([a, b, c], fg_ratio=0.25)
    assert report["schema"] == "babo-edge/mac-report" and report["version"] == 1
    od = report["networks"]["od"]
    assert [blk["name"] for blk in od["blocks"]] == ["b1", "b2"]
    assert od["totals"]["mac"] == 4 * 4 * 8 * 9 + 2 * 2 * 8 * 16
    assert od["totals"]["mac_star"] == 4 * 4 * 8 * 9 + 0  # c is all zeros
    assert od["totals"]["zero_ratio"] == pytest.approx(32 / (128 + 32))
    omg = report["networks"]["omg"]["totals"]
    assert omg["mac_star"] == pytest.approx((48 - 12) * 8 * 9)
    assert report["totals"]["mac"] == omg["mac"] + od["totals"]["mac"]
    assert report["totals"]["zeros"] == 44
    row = od["layers"][0]
    assert row["input_shape"] == [8, 4, 4] and row["groups"] == 8 and row["zero_ratio"] == 0
    text = format_report(report)
    assert "FG-ratio 25.00%" in text and "[omg] blocks" in text and "[od] layers" in text


def test_accumulator_averages_zeros_and_fg_ratio():
    conv = layer(2, 2, (2, 2), k=1)
    acc = ReportAccumulator()
    acc.add([LayerCount(conv, 0)], fg_ratio=1.0)
    acc.add([LayerCount(conv, 8)], fg_ratio=0.0)
    report = acc.report()
    assert report["images"] == 2 and report["fg_ratio"] == 0.5
    assert report["totals"]["mac_star"] == pytest.approx(conv_macs(conv) / 2)
    with pytest.raises(ValueError, match="layer list changed"):
        acc.add([LayerCount(layer(2, 4, (2, 2)), 0)])
    with pytest.raises(ValueError, match="no image"):
        ReportAccumulator().report()


def test_accounting_imports_without_torch():
    """The runtime on an edge box has no torch: the accounting module must not need it."""
    code = ("import sys; import babo_edge.models.accounting; "
            "assert 'torch' not in sys.modules and 'nncf' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")  # the installed package, not the checkout
