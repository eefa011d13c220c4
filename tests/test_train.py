import math

import pytest
import torch
import torch.nn.functional as F

from data import CUSTOM_FILES, load_mnist, make_loaders
from LeNet5 import LeNet5
from train import (
    Recipe,
    TrainingDiverged,
    TrainingInterrupted,
    capture_state,
    fit,
    make_optimizer,
    make_scheduler,
    new_history,
    restore_state,
    train_one_epoch,
)

CPU = torch.device("cpu")


def setup(idx_dir, recipe: Recipe):
    data = load_mnist(idx_dir, None, CUSTOM_FILES, download=False)
    loaders = make_loaders(data, recipe.batch_size, recipe.seed, recipe.augment)
    torch.manual_seed(recipe.seed)
    model = LeNet5().to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe, len(loaders.train))
    return model, optimizer, scheduler, loaders


def run_fit(model, optimizer, scheduler, loaders, recipe, history=None):
    history = history or new_history(len(loaders.train))
    return fit(model, optimizer, scheduler, loaders.train, loaders.test, loaders.generator, recipe, CPU, history)


def test_training_lowers_the_loss(idx_dir):
    recipe = Recipe(epochs=4, batch_size=16, lr=0.05)
    model, optimizer, scheduler, loaders = setup(idx_dir, recipe)
    x, y = next(iter(loaders.test))
    before = F.cross_entropy(model(x), y).item()
    history = run_fit(model, optimizer, scheduler, loaders, recipe)
    after = F.cross_entropy(model(x), y).item()
    assert after < 0.7 * before
    assert len(history["step_losses"]) == 4 * len(loaders.train)
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3, 4]
    assert history["epochs"][-1]["eval_accuracy"] > 0.5  # the synthetic digits are easy
    assert all(math.isfinite(v) for v in history["step_losses"])


def test_same_seed_gives_bitwise_identical_weights(idx_dir):
    results = []
    for _ in range(2):
        recipe = Recipe(epochs=2, batch_size=16, seed=5)
        model, optimizer, scheduler, loaders = setup(idx_dir, recipe)
        run_fit(model, optimizer, scheduler, loaders, recipe)
        results.append(model.state_dict())
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_schedule_decays_to_zero():
    model = LeNet5()
    recipe = Recipe(epochs=2)
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe, steps_per_epoch=5)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.01) and lrs == sorted(lrs, reverse=True)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0)


def test_non_finite_loss_stops_training(idx_dir):
    recipe = Recipe(epochs=1, batch_size=16)
    model, optimizer, scheduler, loaders = setup(idx_dir, recipe)
    with torch.no_grad():
        model.output.bias.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="loss became nan"):
        train_one_epoch(model, loaders.train, optimizer, scheduler, CPU, epoch=1, log_interval=2)


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
    model, optimizer, scheduler, loaders = setup(idx_dir, recipe)
    run_fit(model, optimizer, scheduler, loaders, recipe)
    expected = model.state_dict()

    model, optimizer, scheduler, loaders = setup(idx_dir, recipe)
    interrupted = loaders._replace(train=InterruptAt(loaders.train, epoch=2, step=2))
    with pytest.raises(TrainingInterrupted) as stop:
        run_fit(model, optimizer, scheduler, interrupted, recipe)
    state = stop.value.state
    assert state["epoch"] == 1 and len(state["history"]["epochs"]) == 1
    torch.save(state, idx_dir / "resume.pt")  # through the disk, as main.py does
    state = torch.load(idx_dir / "resume.pt", weights_only=True)

    model, optimizer, scheduler, loaders = setup(idx_dir, recipe)
    model.load_state_dict(state.pop("model"))
    restore_state(state, optimizer, scheduler, loaders.generator)
    run_fit(model, optimizer, scheduler, loaders, recipe, history=state["history"])
    assert all(torch.equal(expected[k], model.state_dict()[k]) for k in expected)


def test_capture_state_is_a_deep_copy(tiny_model):
    recipe = Recipe()
    optimizer = make_optimizer(tiny_model, recipe)
    scheduler = make_scheduler(optimizer, recipe, 10)
    state = capture_state(tiny_model, optimizer, scheduler, torch.Generator(), recipe, 0, new_history(10))
    with torch.no_grad():
        tiny_model.c1.weight.add_(1.0)
    assert not torch.equal(state["model"]["c1.weight"], tiny_model.c1.weight)
