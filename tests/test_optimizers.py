import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from LeNet5 import LeNet5
from support.optimizers import MuonAndAdamW, make_optimizer
from support.recipes import Recipe

MUON = Recipe(optimizer="muon", lr=0.02, momentum=0.7, beta2=0.9, weight_decay=0.01)
MUON_CONV = replace(MUON, muon_conv=True)  # the filters under Muon too


def batches(count: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 1, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(count)]


def train(model: LeNet5, optimizer: torch.optim.Optimizer, data, scheduler=None) -> None:
    for x, y in data:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if scheduler:
            scheduler.step()


def test_adam_takes_its_betas_from_momentum_and_beta2_and_adamw_decouples_weight_decay():
    adam = make_optimizer(LeNet5(), Recipe(optimizer="adam", momentum=0.7, beta2=0.9, weight_decay=0.1))
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["betas"] == (0.7, 0.9)
    assert isinstance(make_optimizer(LeNet5(), Recipe(optimizer="adamw")), torch.optim.AdamW)


def test_muon_takes_the_hidden_weight_matrices_and_adamw_the_rest():
    model = LeNet5()
    optimizer = make_optimizer(model, MUON)
    muon, adamw = optimizer.param_groups
    assert [p is q for p, q in zip(muon["params"], [model.c5.weight, model.f6.weight])] == [True, True]
    rest = [p for name, p in model.named_parameters() if name not in ("c5.weight", "f6.weight")]
    assert len(adamw["params"]) == len(rest) and all(p is q for p, q in zip(adamw["params"], rest))
    assert muon["momentum"] == 0.95 and muon["nesterov"]  # Muon's own default
    assert adamw["betas"] == (0.7, 0.9) and adamw["fused"]
    assert muon["weight_decay"] == adamw["weight_decay"] == 0.01 and muon["lr"] == adamw["lr"] == 0.02


def test_muon_and_adamw_step_as_torchs_two_optimizers_do_under_one_schedule():
    """An independent reference: torch.optim.Muon and AdamW built by hand, each with its own scheduler."""
    torch.manual_seed(0)
    model = LeNet5()
    reference, initial = copy.deepcopy(model), copy.deepcopy(model)
    optimizer = MuonAndAdamW(model, 0.02, (0.7, 0.9), 0.01, ns_dtype=torch.bfloat16)  # torch's own precision
    halve = lambda step: 0.5**step  # noqa: E731
    train(model, optimizer, batches(4), torch.optim.lr_scheduler.LambdaLR(optimizer, halve))

    matrices = [reference.c5.weight, reference.f6.weight]
    rest = [p for p in reference.parameters() if all(p is not m for m in matrices)]
    muon = torch.optim.Muon(matrices, lr=0.02, weight_decay=0.01)
    adamw = torch.optim.AdamW(rest, lr=0.02, betas=(0.7, 0.9), weight_decay=0.01, fused=True)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, halve) for o in (muon, adamw)]
    for x, y in batches(4):
        muon.zero_grad(), adamw.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        muon.step(), adamw.step()
        [s.step() for s in schedulers]
    for mine, theirs, before in zip(model.parameters(), reference.parameters(), initial.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
        assert not torch.equal(mine, before)  # every parameter was trained


@pytest.mark.parametrize("recipe", [MUON, MUON_CONV], ids=["muon", "muon-conv"])
def test_a_loaded_state_goes_on_exactly_as_the_uninterrupted_optimizer(recipe):
    torch.manual_seed(0)
    model = LeNet5()
    optimizer = make_optimizer(model, recipe)
    train(model, optimizer, batches(3))
    saved_model, saved = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    train(model, optimizer, batches(3, seed=1))

    resumed = LeNet5()
    resumed.load_state_dict(saved_model)
    fresh = make_optimizer(resumed, recipe)
    fresh.load_state_dict(saved)
    assert fresh.muon.state is fresh.state is fresh.adamw.state  # the halves see the loaded state
    assert fresh.muon.param_groups[0] is fresh.param_groups[0] and fresh.adamw.param_groups[0] is fresh.param_groups[1]
    train(resumed, fresh, batches(3, seed=1))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))


def test_state_dict_numbers_the_parameters_group_after_group():
    model = LeNet5()
    optimizer = make_optimizer(model, MUON)
    train(model, optimizer, batches(1))
    state = optimizer.state_dict()
    assert [g["params"] for g in state["param_groups"]] == [[0, 1], list(range(2, 10))]
    order = [p for group in optimizer.param_groups for p in group["params"]]
    assert all(state["state"][i]["momentum_buffer"].shape == order[i].shape for i in (0, 1))
    assert all(state["state"][i]["exp_avg"].shape == order[i].shape for i in range(2, 10))


def test_a_closure_is_refused():
    with pytest.raises(ValueError, match="no closure"):
        MuonAndAdamW(LeNet5(), 0.01, (0.9, 0.99), 0.0).step(lambda: 0.0)


def test_muon_on_the_filters_steps_them_as_torchs_muon_steps_their_flattened_matrix():
    """The reference: a plain conv network's filters flattened by hand, torch.optim.Muon on those matrices."""
    torch.manual_seed(0)
    model = LeNet5()
    filters = {"c1": model.c1.weight.detach().clone(), "c3": model.c3.weight.detach().clone()}
    optimizer = MuonAndAdamW(model, 0.02, (0.7, 0.9), 0.01, conv_filters=True, ns_dtype=torch.bfloat16)
    assert len(optimizer.param_groups[0]["params"]) == 4  # C5, F6 and the two flattened filter banks
    assert all(p is not model.c1.weight and p is not model.c3.weight for p in optimizer.param_groups[1]["params"])
    x, y = batches(1)[0]
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    grads = {name: getattr(model, name).weight.grad.clone() for name in filters}
    optimizer.step()

    mask = model.c3.mask
    for name, before in filters.items():
        matrix = torch.nn.Parameter(before.flatten(1).clone())
        matrix.grad = grads[name].flatten(1)
        torch.optim.Muon([matrix], lr=0.02, weight_decay=0.01).step()
        expected = matrix.detach().view_as(before) * (mask if name == "c3" else 1)
        torch.testing.assert_close(getattr(model, name).weight.detach(), expected)
    assert torch.all(model.c3.weight[mask.expand_as(model.c3.weight) == 0] == 0)  # the table's cut weights stay 0


def test_on_the_cpu_muon_orthogonalizes_in_float32_what_torch_does_in_bfloat16():
    from torch.optim._muon import _zeropower_via_newtonschulz

    from support.optimizers import orthogonalize

    assert make_optimizer(LeNet5(), MUON).muon.ns_dtype == torch.float32
    g = torch.randn(120, 400, generator=torch.Generator().manual_seed(0))
    coefficients = (3.4445, -4.7750, 2.0315)
    ours, torchs = (
        orthogonalize(g, coefficients, 5, 1e-7, torch.float32),
        _zeropower_via_newtonschulz(g, coefficients, 5, 1e-7),
    )
    assert ours.dtype == torch.float32 and (ours - torchs.float()).abs().max() < 0.05  # bfloat16's rounding apart
    exact = orthogonalize(g, coefficients, 5, 1e-7, torch.bfloat16).float()
    assert torch.equal(exact, torchs.float())  # in bfloat16, torch's iteration to the bit
