import pytest
import torch
import torch.nn.functional as F

from LeNet5 import C3_TABLE, LeNet5, c3_connection_mask, count_parameters, layer_table
from support.optimizers import make_optimizer
from support.recipes import Recipe


def test_forward_shape_and_finite(tiny_model):
    logits = tiny_model(torch.randn(7, 1, 32, 32))
    assert logits.shape == (7, 10)
    assert torch.isfinite(logits).all()


def test_feature_map_shapes(tiny_model):
    maps = tiny_model.feature_maps(torch.randn(2, 1, 32, 32))
    assert maps["C1"].shape == (2, 6, 28, 28)
    assert maps["C3"].shape == (2, 16, 10, 10)


def test_parameter_counts_match_the_paper():
    assert count_parameters(LeNet5(c3_table=True)) == 60_806
    assert count_parameters(LeNet5(c3_table=False)) == 61_706
    c3 = {name: params for name, _, params in layer_table(LeNet5())}["C3"]
    assert c3 == 1_516  # 60 connections x 25 weights + 16 biases


def test_mask_is_lecuns_table():
    mask = c3_connection_mask()[:, :, 0, 0]
    assert mask.sum() == 60
    assert mask[0].nonzero().flatten().tolist() == [0, 1, 2]
    assert mask[9].nonzero().flatten().tolist() == [0, 3, 4, 5]
    assert mask[14].nonzero().flatten().tolist() == [0, 2, 3, 5]
    assert mask[15].sum() == 6
    assert [tuple(sorted(t)) for t in C3_TABLE] == [tuple(r.nonzero().flatten().tolist()) for r in mask]


OPTIMIZERS = {  # as train.py builds them (Adam's is the fused kernel)
    "sgd": Recipe(lr=0.1, momentum=0.9, weight_decay=1e-3),
    "adam": Recipe(optimizer="adam", lr=0.01, weight_decay=1e-3),
    "adamw": Recipe(optimizer="adamw", lr=0.01, weight_decay=0.1),
    "muon": Recipe(optimizer="muon", lr=0.02, weight_decay=0.1),  # C3 is AdamW's
}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_masked_weights_stay_exactly_zero_through_training(optimizer):
    torch.manual_seed(0)
    model = LeNet5()
    unconnected = c3_connection_mask().expand_as(model.c3.weight) == 0
    optimizer = make_optimizer(model, OPTIMIZERS[optimizer])
    for _ in range(5):
        loss = F.cross_entropy(model(torch.randn(16, 1, 32, 32)), torch.randint(0, 10, (16,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert (model.c3.weight[unconnected] == 0).all()
    assert (model.c3.weight[~unconnected] != 0).all()


def test_unconnected_maps_do_not_influence_c3_output():
    """C3 map 0 reads S2 maps 0-2 only: changing S2 map 5 must leave it untouched."""
    torch.manual_seed(0)
    model = LeNet5()
    x = torch.randn(1, 6, 14, 14)
    y = x.clone()
    y[:, 5] += 1.0
    assert torch.equal(model.c3(x)[:, 0], model.c3(y)[:, 0])
    assert not torch.equal(model.c3(x)[:, 15], model.c3(y)[:, 15])
