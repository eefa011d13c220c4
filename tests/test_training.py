"""lecun1998/training.py: the MAP criterion against hand-computed values, the schedule against appendix C's, the SDLM
step against its formula worked out by hand, and the curvature against the recurrences written out loop by loop."""

import math

import pytest
import torch
from conftest import synthetic_digits
from torch import nn

from data import preprocess
from lecun1998.layers import A, S, Subsampling
from lecun1998.training import SDLM, curvature, global_step, map_loss
from LeNet5 import LeNet5


def test_the_map_criterion_is_the_correct_penalty_plus_a_capped_log_term():
    penalties = torch.tensor([[1.0, 2.0, 4.0], [3.0, 0.5, 9.0]])
    j = 0.5
    expected = [1.0 + math.log(math.exp(-j) + math.exp(-1) + math.exp(-2) + math.exp(-4)),
                0.5 + math.log(math.exp(-j) + math.exp(-3) + math.exp(-0.5) + math.exp(-9))]  # fmt: skip
    loss = map_loss(-penalties, torch.tensor([0, 1]), j)
    assert loss.item() == pytest.approx(sum(expected), rel=1e-6)  # summed over the patterns
    # Far from every class the log term is pinned at -j: the loss is then the correct penalty alone, minus j.
    far = map_loss(-torch.tensor([[300.0, 400.0]]), torch.tensor([1]), j)
    assert far.item() == pytest.approx(400.0 - j)


def test_the_global_step_follows_appendix_c():
    steps = [global_step(epoch) for epoch in range(20)]
    assert steps == [5e-4] * 2 + [2e-4] * 3 + [1e-4] * 3 + [5e-5] * 4 + [1e-5] * 8


def test_an_sdlm_step_divides_each_gradient_by_mu_plus_its_own_curvature():
    layer = nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0]]))
        layer.bias.fill_(0.5)
    optimizer = SDLM(layer.parameters(), lr=0.01, mu=0.1, patterns_per_step=4)
    optimizer.set_curvature([torch.tensor([[0.9, 0.0]]), torch.tensor([1.9])])
    layer(torch.tensor([[3.0, 5.0]])).sum().backward()  # gradients: weight (3, 5), bias 1
    optimizer.step()
    # w <- w - lr * patterns_per_step / (mu + h) * g, by hand: 0.04 / 1.0 * 3, 0.04 / 0.1 * 5, 0.04 / 2.0 * 1
    assert layer.weight.tolist()[0] == pytest.approx([1.0 - 0.12, -2.0 - 2.0])
    assert layer.bias.item() == pytest.approx(0.5 - 0.02)
    with pytest.raises(ValueError, match="2 parameters but 1 curvature"):
        optimizer.set_curvature([torch.zeros(1, 2)])


def _squash_slope(a: torch.Tensor) -> torch.Tensor:
    return A * S / torch.cosh(S * a) ** 2  # d/da A tanh(S a), written differently from the module's


def test_the_curvature_of_f6_is_appendix_c_written_out_unit_by_unit():
    torch.manual_seed(0)
    model = LeNet5(lecun1998=True)
    images, labels = synthetic_digits(3, seed=1)
    x = preprocess(images)
    h = dict(zip([n for n, _ in model.named_parameters()], curvature(model, x, labels, j=0.3), strict=True))
    expected_w, expected_b = torch.zeros_like(model.f6.weight), torch.zeros_like(model.f6.bias)
    with torch.no_grad():
        for n in range(len(x)):
            maps = model.input(x[n : n + 1])
            for layer in (model.c1, model.s2, model.c3, model.s4):
                maps = A * torch.tanh(S * layer(maps))
            c5 = A * torch.tanh(S * model.c5(maps.flatten(1)))[0]  # C5's 120 outputs
            a6 = model.f6.weight @ c5 + model.f6.bias
            f6 = A * torch.tanh(S * a6)
            penalties = [((f6 - model.output.centres[i]) ** 2).sum() for i in range(10)]
            total = math.exp(-0.3) + sum(math.exp(-y.item()) for y in penalties)
            p = [math.exp(-y.item()) / total for y in penalties]
            # at each F6 output: the RBFs' first derivatives squared times d2E/dy2 = p (1 - p), plus their own
            # second derivative, 2, times dE/dy summed over the classes (the extra class's share)
            at_output = sum((2 * (f6 - model.output.centres[i])) ** 2 * p[i] * (1 - p[i]) for i in range(10))
            at_output += 2 * math.exp(-0.3) / total
            at_sum = _squash_slope(a6) ** 2 * at_output
            expected_b += at_sum / len(x)
            expected_w += at_sum.unsqueeze(1) * c5.unsqueeze(0) ** 2 / len(x)
    assert torch.allclose(h["f6.bias"], expected_b, rtol=1e-4)
    assert torch.allclose(h["f6.weight"], expected_w, rtol=1e-4, atol=1e-12)


def test_second_derivatives_cross_a_subsampling_and_a_convolution_as_the_recurrences_say():
    """Below F6 the same rules: d2E/dw2 = sum over the weight's connections of x^2 d2E/da2, and at an input the
    sum over its outgoing connections of w^2 d2E/da2 (a shared weight counts once per connection)."""
    from lecun1998.training import _backward_second, _second_derivatives

    torch.manual_seed(0)
    conv = nn.Conv2d(2, 1, 2)
    x, g2 = torch.randn(1, 2, 3, 3), torch.rand(1, 1, 2, 2)
    h = _second_derivatives(conv, x, g2)
    by_hand = torch.zeros_like(conv.weight)
    into = torch.zeros_like(x)
    for c in range(2):
        for u in range(2):
            for v in range(2):
                for i in range(2):
                    for k in range(2):
                        by_hand[0, c, u, v] += x[0, c, i + u, k + v] ** 2 * g2[0, 0, i, k]
                        into[0, c, i + u, k + v] += conv.weight[0, c, u, v] ** 2 * g2[0, 0, i, k]
    assert torch.allclose(h[conv.weight], by_hand) and h[conv.bias].item() == pytest.approx(g2.sum().item())
    assert torch.allclose(_backward_second(conv, x, g2), into.detach())

    pool = Subsampling(1)
    with torch.no_grad():
        pool.weight.fill_(-0.5)
    x, g2 = torch.randn(1, 1, 4, 4), torch.rand(1, 1, 2, 2)
    blocks = x.unfold(2, 2, 2).unfold(3, 2, 2).sum((-1, -2))  # each unit's 2x2 sum
    assert _second_derivatives(pool, x, g2)[pool.weight].item() == pytest.approx((blocks**2 * g2).sum().item())
    every_input = _backward_second(pool, x, g2)  # each input feeds one unit, through the coefficient
    assert torch.allclose(every_input, 0.25 * g2.repeat_interleave(2, 2).repeat_interleave(2, 3))


def test_the_curvature_is_positive_where_a_parameter_is_used_and_zero_where_the_c3_table_cuts():
    torch.manual_seed(0)
    model = LeNet5(lecun1998=True)
    images, labels = synthetic_digits(8, seed=2)
    h = dict(zip([n for n, _ in model.named_parameters()], curvature(model, preprocess(images), labels)))
    assert all((value >= 0).all() for value in h.values())
    cut = model.c3.mask.expand_as(model.c3.weight) == 0
    assert (h["c3.weight"][cut] == 0).all() and (h["c3.weight"][~cut] > 0).all()
    assert (h["c1.weight"] > 0).all() and (h["s2.weight"] > 0).all()
