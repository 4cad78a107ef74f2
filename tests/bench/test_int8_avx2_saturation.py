"""benchmarks/int8_avx2_saturation.py: its emulation of ONNX Runtime's AVX2 (no VNNI) int8 convolution."""
import importlib.util
from pathlib import Path

import numpy as np
import onnx
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "int8_avx2_saturation.py"


def _script():
    spec = importlib.util.spec_from_file_location("int8_avx2_saturation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _conv(pads, strides):
    return onnx.helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=pads, strides=strides)


def test_the_contraction_is_the_integer_convolution():
    sat = _script()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 6, 7, 5), generator=g, dtype=torch.int32)
    w = torch.randint(-40, 41, (4, 6, 3, 3), generator=g, dtype=torch.int32)  # no pair can saturate
    zero_point = 128
    for pads, strides in (([1, 1, 1, 1], [1, 1]), ([0, 1, 2, 0], [2, 1])):
        cols, W = sat.contraction(_conv(pads, strides), x, w.numpy().astype(np.int8), zero_point)
        saturated, pairs, err, exact = sat.saturation(cols, W, zero_point)
        padded = torch.nn.functional.pad((x - zero_point).double(), (pads[1], pads[3], pads[0], pads[2]))
        want = torch.nn.functional.conv2d(padded, w.double(), stride=strides)
        assert torch.equal(exact.view(want.shape), want)
        assert saturated == 0 and pairs == 2 * 4 * 3 * 9 * want.shape[2] * want.shape[3] and not err.any()


def test_a_pair_over_int16_is_clipped_as_vpmaddubsw_clips_it():
    sat = _script()
    cols = torch.tensor([[[255], [255], [255], [1]]], dtype=torch.int32)  # one row, K = 4, L = 1
    W = torch.tensor([[127, 127, 127, 5]], dtype=torch.int32)
    saturated, pairs, err, exact = sat.saturation(cols, W, 0)
    # pairs (255*127 + 255*127 = 64770 -> 32767) and (255*127 + 5 = 32390, fits)
    assert (saturated, pairs) == (1, 2)
    assert float(exact) == 255 * 127 * 3 + 5 and float(err) == 32767 - 64770
    odd = sat.saturation(cols[:, :3], W[:, :3], 0)  # K odd: MLAS pads with a zero
    assert odd[0] == 1 and float(odd[3]) == 255 * 127 * 3


def test_pairs_are_adjacent_input_channels_at_one_tap():
    # MLAS reorders the filter to HWIO: the contraction runs over taps, input channels innermost
    sat = _script()
    x = torch.full((1, 2, 3, 3), 255, dtype=torch.int32)
    w = np.zeros((1, 2, 3, 3), dtype=np.int8)
    w[0, :, 1, 1] = 127  # both input channels at the centre tap: one pair of 64770
    cols, W = sat.contraction(_conv([0, 0, 0, 0], [1, 1]), x, w, 0)
    assert sat.saturation(cols, W, 0)[0] == 1
    w[0, :, 1, 1] = 0
    w[0, 0, 0, 0] = w[0, 0, 0, 1] = 127  # two adjacent taps of one channel: never one pair
    cols, W = sat.contraction(_conv([0, 0, 0, 0], [1, 1]), x, w, 0)
    assert sat.saturation(cols, W, 0)[0] == 0
