"""lecun1998/layers.py, inside LeNet5(lecun1998=True): the 1998 paper's network, its shapes and parameter counts
against section II.B's, and each part against hand-computed values."""

import pytest
import torch
from conftest import synthetic_digits

from data import preprocess
from lecun1998.layers import BITMAPS, A, PaperInput, RBFOutput, S, Subsampling, bitmap_vectors, squash
from LeNet5 import C3_TABLE, INPUT_NORMALIZATION, LeNet5, count_parameters, layer_table

PAPER = {"C1": 156, "S2": 12, "C3": 1516, "S4": 32, "C5": 48120, "F6": 10164, "OUTPUT": 0}  # section II.B


def test_the_layers_have_the_papers_parameter_counts_and_shapes():
    torch.manual_seed(0)
    model = LeNet5(lecun1998=True)
    counts = {name: params for name, _, params in layer_table(model) if name != "INPUT"}
    assert counts == PAPER and count_parameters(model) == 60_000  # "about 60,000 trainable parameters"
    x = model.input(preprocess(synthetic_digits(2, seed=0)[0]))
    shapes = []
    for layer in (model.c1, model.s2, model.c3, model.s4):
        x = squash(layer(x))
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [(6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5)]
    assert model.f6.out_features == 84 == 7 * 12 and model(torch.zeros(3, 1, 32, 32)).shape == (3, 10)


def test_the_squashing_is_a_scaled_tanh_through_plus_and_minus_one():
    a = torch.tensor([-1.0, 0.0, 1.0, 100.0])
    assert torch.allclose(squash(a), A * torch.tanh(S * a)) and (A, S) == (1.7159, 2 / 3)
    assert squash(torch.tensor(1.0)).item() == pytest.approx(1.0, abs=1e-4) and squash(torch.tensor(100.0)) == A


def test_the_input_is_the_papers_background_and_foreground():
    digits = torch.tensor([[[0] * 28] * 27 + [[255] * 28]], dtype=torch.uint8)  # background, a row of full ink
    scaled = PaperInput(INPUT_NORMALIZATION["mean"], INPUT_NORMALIZATION["std"])(preprocess(digits))
    assert scaled[0, 0, 0, 0].item() == pytest.approx(-0.1, abs=1e-6)  # the padding too: background
    assert scaled[0, 0, 29, 5].item() == pytest.approx(1.175, abs=1e-5)


def test_subsampling_sums_a_block_then_scales_and_shifts_it():
    layer = Subsampling(2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, -1.0]))
        layer.bias.copy_(torch.tensor([1.0, 0.0]))
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).expand(1, 2, 2, 2)
    assert layer(x).flatten().tolist() == [0.5 * 10 + 1, -10.0]


def test_the_rbf_units_are_squared_distances_to_fixed_bitmaps():
    centres = bitmap_vectors()
    assert centres.shape == (10, 84) and set(centres.unique().tolist()) == {-1.0, 1.0}
    assert all(len(BITMAPS[d]) == 12 and all(len(row) == 7 for row in BITMAPS[d]) for d in range(10))
    differing = (centres.unsqueeze(0) != centres.unsqueeze(1)).sum(-1)
    assert differing[~torch.eye(10, dtype=torch.bool)].min() >= 10  # every two digits differ in 10 pixels or more
    rbf = RBFOutput()
    y = rbf.penalties(centres[3:4])  # F6 exactly on the bitmap of 3
    assert y[0, 3] == 0 and torch.equal(y[0], 4.0 * differing[3])  # each differing pixel: (1 - (-1))^2
    assert not list(rbf.parameters()) and torch.equal(rbf(centres[3:4]), -y)  # fixed; logits are -penalties


def test_the_weights_start_uniform_within_2_4_over_the_fan_in():
    torch.manual_seed(0)
    model = LeNet5(lecun1998=True)
    assert model.c1.weight.abs().max() <= 2.4 / 25 and model.c1.weight.abs().max() > 0.9 * 2.4 / 25
    assert model.c5.weight.abs().max() <= 2.4 / 400 and model.f6.weight.abs().max() <= 2.4 / 120
    assert model.s2.weight.abs().max() <= 2.4 / 4 and model.s4.bias.abs().max() <= 2.4 / 4
    for out_map, inputs in enumerate(C3_TABLE):  # each C3 map: 25 inputs from each S2 map it reads
        weights, unread = model.c3.weight[out_map], [i for i in range(6) if i not in inputs]
        assert weights.abs().max() <= 2.4 / (25 * len(inputs)) and (weights[unread] == 0).all()
        assert weights.abs().max() > 0.8 * 2.4 / (25 * len(inputs))  # (the bound is the map's own)


def test_the_modern_network_is_untouched_by_the_option():
    torch.manual_seed(0)
    modern = LeNet5()
    assert "lecun1998" not in modern.config and count_parameters(modern) == 60_806
    with pytest.raises(ValueError, match="num_classes is 10"):
        LeNet5(num_classes=26, lecun1998=True)
