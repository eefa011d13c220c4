import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from conftest import N_TRAIN

from data import load_mnist, make_generators, make_loaders
from idx import CUSTOM_FILES
from LeNet5 import LeNet5
from recipes import Recipe, augmentation_for
from train import (
    EXPLODED_LOSS,
    TrainingDiverged,
    TrainingInterrupted,
    TrainState,
    check_loss,
    fit,
    make_optimizer,
    make_scheduler,
    train_one_epoch,
)

CPU = torch.device("cpu")


def setup(idx_dir, recipe: Recipe):
    """What main.py does, in the same order (the weights depend on it)."""
    data = load_mnist(idx_dir, None, CUSTOM_FILES, download=False)
    loaders = make_loaders(data, recipe.batch_size, recipe.seed, augmentation_for(recipe))
    torch.manual_seed(recipe.seed)
    model = LeNet5().to(memory_format=torch.channels_last)
    return TrainState(model, recipe, len(loaders.train), loaders.generators), loaders


def run_fit(state, loaders, train=None):
    return fit(state, replace(loaders, train=train) if train else loaders, CPU, log_interval=1000)


def test_training_lowers_the_loss(idx_dir):
    recipe = Recipe(epochs=4, batch_size=16, lr=0.05)
    state, loaders = setup(idx_dir, recipe)
    x, y = next(iter(loaders.test))
    before = F.cross_entropy(state.model(x), y).item()
    history = run_fit(state, loaders)
    after = F.cross_entropy(state.model(x), y).item()
    assert after < 0.7 * before
    assert len(history.step_losses) == 4 * len(loaders.train) == 4 * (N_TRAIN // 16)
    assert [e.epoch for e in history.epochs] == [1, 2, 3, 4] and state.epoch == 4
    assert history.epochs[-1].eval_accuracy > 0.5  # the synthetic digits are easy
    assert all(math.isfinite(v) for v in history.step_losses)


def test_same_seed_gives_bitwise_identical_weights(idx_dir):
    results = []
    for _ in range(2):
        state, loaders = setup(idx_dir, Recipe(epochs=2, batch_size=16, seed=5))
        run_fit(state, loaders)
        results.append(state.model.state_dict())
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def learning_rates(schedule: str, steps: int = 10) -> list[float]:
    optimizer = make_optimizer(LeNet5(), Recipe(epochs=2, schedule=schedule))
    scheduler = make_scheduler(optimizer, Recipe(epochs=2, schedule=schedule), steps_per_epoch=steps // 2)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates + [optimizer.param_groups[0]["lr"]]


def test_schedules():
    linear, cosine, constant = (learning_rates(s) for s in ("linear", "cosine", "constant"))
    assert linear == pytest.approx([0.01 * (1 - i / 10) for i in range(11)])
    assert cosine == pytest.approx([0.01 * 0.5 * (1 + math.cos(math.pi * i / 10)) for i in range(11)])
    assert cosine[5] == pytest.approx(0.005) and cosine[-1] == pytest.approx(0.0, abs=1e-12)
    assert constant == [0.01] * 11


def test_non_finite_loss_stops_training(idx_dir):
    state, loaders = setup(idx_dir, Recipe(epochs=1, batch_size=16))
    with torch.no_grad():
        state.model.output.bias.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 1, step 2"):
        train_one_epoch(state.model, loaders.train, state.optimizer, state.scheduler, CPU, epoch=1, log_interval=2)


def test_an_exploding_loss_stops_training(idx_dir):
    state, loaders = setup(idx_dir, Recipe(epochs=3, batch_size=16, lr=1e9))
    with pytest.raises(TrainingDiverged, match="loss exploded to"):
        run_fit(state, loaders)
    check_loss(EXPLODED_LOSS - 1, 1, 1)  # a bad but finite start is not an explosion


def test_state_dict_round_trip_is_symmetric(idx_dir):
    recipe = Recipe(epochs=2, batch_size=16)
    state, loaders = setup(idx_dir, recipe)
    run_fit(state, loaders)
    saved = state.state_dict()
    torch.save(saved, idx_dir / "state.pt")  # through the disk, as main.py does

    fresh, _ = setup(idx_dir, recipe)
    fresh.load_state_dict(torch.load(idx_dir / "state.pt", weights_only=True))
    again = fresh.state_dict()
    assert set(again) == set(saved) and again["epoch"] == 2 and again["history"] == saved["history"]
    assert all(torch.equal(again["model"][k], v) for k, v in saved["model"].items())
    assert torch.equal(again["rng"]["shuffle"], saved["rng"]["shuffle"]) and again["world_size"] == 1
    assert again["scheduler"] == saved["scheduler"]
    with pytest.raises(ValueError, match="saved recipe"):
        setup(idx_dir, Recipe(epochs=3, batch_size=16))[0].load_state_dict(saved)


class InterruptAt:
    """Wraps a loader and raises KeyboardInterrupt (a Ctrl-C) at a given epoch and step."""

    def __init__(self, loader, epoch: int, step: int):
        self.loader, self.epoch, self.step, self.calls = loader, epoch, step, 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.calls += 1
        for i, batch in enumerate(self.loader):
            if self.calls == self.epoch and i == self.step:
                raise KeyboardInterrupt
            yield batch


def test_interrupt_then_resume_matches_an_uninterrupted_run(idx_dir):
    recipe = Recipe(epochs=3, batch_size=16, seed=1)
    state, loaders = setup(idx_dir, recipe)
    run_fit(state, loaders)
    expected = state.model.state_dict()

    state, loaders = setup(idx_dir, recipe)
    with pytest.raises(TrainingInterrupted) as stop:
        run_fit(state, loaders, train=InterruptAt(loaders.train, epoch=2, step=2))
    saved = stop.value.state
    assert saved["epoch"] == 1 and len(saved["history"]["epochs"]) == 1

    state, loaders = setup(idx_dir, recipe)
    state.load_state_dict(saved)
    run_fit(state, loaders)
    assert all(torch.equal(expected[k], state.model.state_dict()[k]) for k in expected)


def test_state_dict_is_a_snapshot(tiny_model):
    state = TrainState(tiny_model, Recipe(), 10, make_generators(0))
    saved = state.state_dict()
    with torch.no_grad():
        tiny_model.c1.weight.add_(1.0)
    assert not torch.equal(saved["model"]["c1.weight"], tiny_model.c1.weight)
