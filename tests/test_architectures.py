"""The light networks against published facts: parameter counts, taps, any input size."""
import pytest
import torch

from babo_edge.models.fast_scnn import FastSCNN, adaptive_avg_pool_matrix
from babo_edge.models.mobilenetv2 import MobileNetV2


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_mobilenetv2_matches_the_reference_parameter_count():
    # torchvision's mobilenet_v2 (3,504,872 parameters) minus its classifier (1280*1000 + 1000)
    assert n_params(MobileNetV2(1.0)) == 3_504_872 - 1_281_000


@pytest.mark.parametrize("width, taps", [(1.0, (576, 1280)), (0.75, (432, 1280)), (0.5, (288, 1280))])
def test_ssdlite_taps_are_the_expansion_output_and_the_last_conv(width, taps):
    net = MobileNetV2(width).eval()
    assert net.tap_channels == taps
    with torch.no_grad():
        level1, level2 = net(torch.zeros(1, 3, 320, 320))
    assert level1.shape == (1, taps[0], 20, 20)  # output stride 16
    assert level2.shape == (1, taps[1], 10, 10)  # output stride 32


@pytest.mark.parametrize("hw, out", [((256, 256), None), ((97, 131), None), ((128, 128), (333, 250))])
def test_fast_scnn_any_input_and_output_size(hw, out):
    net = FastSCNN(2).eval()
    with torch.no_grad():
        logits = net(torch.rand(1, 3, *hw), output_size=out)
    assert logits.shape == (1, 2, *(out or hw))


def test_pyramid_pooling_matrix_equals_adaptive_avg_pool():
    x = torch.rand(1, 4, 11, 7)
    for bins in (1, 2, 3, 6):
        ph, pw = adaptive_avg_pool_matrix(11, bins), adaptive_avg_pool_matrix(7, bins)
        assert torch.allclose(ph @ x @ pw.t(), torch.nn.functional.adaptive_avg_pool2d(x, bins), atol=1e-6)
