import math
import os
import signal
from dataclasses import fields, replace

import pytest
import torch
import torch.nn.functional as F
from conftest import N_TRAIN

from data import DataSource, load_mnist, make_loaders
from LeNet5 import LeNet5
from support.devices import place_batch
from support.distributed import ONE
from support.idx import CUSTOM_FILES
from support.optimizers import make_optimizer
from support.recipes import Recipe
from train import (
    EXPLODED_LOSS,
    TrainingDiverged,
    TrainingInterrupted,
    TrainState,
    accuracy,
    check_loss,
    fit,
    make_scheduler,
    train_one_epoch,
)

CPU = torch.device("cpu")


def setup(idx_dir, recipe: Recipe):
    """The loaders and the training state, built by main.py's own prepare() from the flags that give `recipe`."""
    import main

    default = Recipe()
    flags = {
        f.name: getattr(recipe, f.name) for f in fields(Recipe) if getattr(recipe, f.name) != getattr(default, f.name)
    }
    source = DataSource(idx_dir, None, allow_custom=True, download=False)
    out = idx_dir.parent / "out"
    prepared = main.prepare(flags, None, source, main.Outputs(out / "lenet5.pt", out, None), [], ONE, CPU)
    assert prepared.recipe == recipe
    return TrainState(prepared.config, prepared.recipe, prepared.loaders, CPU), prepared.loaders


def run_fit(state, loaders, train=None):
    return fit(state, replace(loaders, train=train) if train else loaders, log_interval=1000)


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
        train_one_epoch(state, loaders.train, log_interval=2)


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


ADAM_WITH_AVERAGE = Recipe(epochs=3, batch_size=16, seed=1, optimizer="adam", lr=0.003, momentum=0.8, ema_decay=0.9,
                           nesterov=False)  # fmt: skip


@pytest.mark.parametrize(
    "recipe",
    [
        Recipe(epochs=3, batch_size=16, seed=1),
        ADAM_WITH_AVERAGE,
        Recipe(epochs=3, batch_size=16, optimizer="muon", nesterov=False),
    ],
    ids=["sgd", "adam-ema", "muon"],
)
def test_interrupt_then_resume_matches_an_uninterrupted_run(idx_dir, recipe):
    state, loaders = setup(idx_dir, recipe)
    run_fit(state, loaders)
    expected = {**state.model.state_dict(), **{f"average.{k}": v for k, v in state.eval_model.state_dict().items()}}

    state, loaders = setup(idx_dir, recipe)
    with pytest.raises(TrainingInterrupted) as stop:
        run_fit(state, loaders, train=InterruptAt(loaders.train, epoch=2, step=2))
    saved = stop.value.state
    assert saved["epoch"] == 1 and len(saved["history"]["epochs"]) == 1

    state, loaders = setup(idx_dir, recipe)
    state.load_state_dict(saved)
    run_fit(state, loaders)
    resumed = {**state.model.state_dict(), **{f"average.{k}": v for k, v in state.eval_model.state_dict().items()}}
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)


def test_the_weight_average_matches_torchs_averaged_model_and_is_what_is_evaluated_and_saved(idx_dir):
    """An independent reference: swa_utils.AveragedModel, given the same warm-up decay, on the same steps."""
    from torch.optim.swa_utils import AveragedModel

    state, loaders = setup(idx_dir, replace(ADAM_WITH_AVERAGE, ema_decay=0.5))  # 3 epochs of 6 steps
    decay = lambda n: min(0.5, (1 + n) / (10 + n))  # noqa: E731
    reference = AveragedModel(state.model, avg_fn=lambda avg, now, n: torch.lerp(avg, now, 1 - decay(n)))
    reference.update_parameters(state.model)  # (its first update copies: the average starts at the initial weights)
    update = state.average.update

    def both(model):  # called after every optimizer step
        update(model)
        reference.update_parameters(model)

    state.average.update = both
    run_fit(state, loaders)
    assert state.average.updates == 3 * len(loaders.train) and decay(state.average.updates) == 0.5  # past the warm-up
    for mine, theirs in zip(state.eval_model.parameters(), reference.module.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    saved = state.state_dict()
    assert all(torch.equal(saved["model"][k], v) for k, v in state.eval_model.state_dict().items())
    assert not torch.equal(saved["model"]["c1.weight"], state.model.c1.weight)  # not the last step's weights
    assert state.history.epochs[-1].eval_accuracy == accuracy(state.eval_model, loaders.held_out, CPU)


def test_state_dict_is_a_snapshot(idx_dir):
    state, _ = setup(idx_dir, Recipe(batch_size=16))
    saved = state.state_dict()
    with torch.no_grad():
        state.model.c1.weight.add_(1.0)
    assert not torch.equal(saved["model"]["c1.weight"], state.model.c1.weight)


def test_warmup_ramps_the_learning_rate_up_then_the_schedule_takes_over():
    recipe = Recipe(epochs=2, schedule="linear", warmup_epochs=1)
    optimizer = make_optimizer(LeNet5(), recipe)
    scheduler = make_scheduler(optimizer, recipe, steps_per_epoch=5)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    decay = [0.01 * (1 - i / 10) for i in range(10)]
    assert rates == pytest.approx([d * min(1.0, (i + 1) / 5) for i, d in enumerate(decay)])
    assert rates[0] == pytest.approx(0.01 * 0.2) and rates[5:] == pytest.approx(decay[5:])


def test_label_smoothing_is_the_loss_that_is_trained_on(idx_dir):
    """The first step's logged loss is cross-entropy with the recipe's smoothing on that step's batch."""
    recipe = Recipe(epochs=1, batch_size=16, label_smoothing=0.3, augment=False)
    state, loaders = setup(idx_dir, recipe)
    logged = run_fit(state, loaders).step_losses[0]
    fresh, loaders = setup(idx_dir, recipe)  # the same initial weights and the same first batch
    images, labels = next(iter(loaders.train))
    logits = fresh.model(place_batch(images, CPU))
    assert logged == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=0.3).item(), rel=1e-6)
    assert abs(logged - F.cross_entropy(logits, labels).item()) > 1e-4  # (near-uniform at the start: close)


def test_a_stop_agreed_during_the_evaluation_keeps_that_epoch(idx_dir, monkeypatch):
    """Under torchrun a Ctrl-C noted while the held-out set is evaluated stops every process after the
    evaluation, with the epoch that just finished (not the one before)."""
    import train

    state, loaders = setup(idx_dir, Recipe(epochs=3, batch_size=16))
    evaluate = train.accuracy

    def signal_arrives_during(*args, **kwargs):
        state.stop.noted = True  # what StopFlag's handler does on SIGINT
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(train, "accuracy", signal_arrives_during)
    with pytest.raises(TrainingInterrupted) as stop:
        run_fit(state, loaders)
    assert stop.value.state["epoch"] == 1 and len(stop.value.state["history"]["epochs"]) == 1


class SyncsForbidden:
    """A loader whose batches are all trained under torch.cuda.set_sync_debug_mode("error"): any step
    that waits for the host raises. The end-of-epoch read-back comes after the last batch and is allowed."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield from self.loader
        finally:
            torch.cuda.set_sync_debug_mode(0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (checks that no training step syncs)")
def test_a_training_step_never_waits_for_the_host(idx_dir):
    cuda = torch.device("cuda")
    recipe = Recipe(epochs=1, batch_size=16, elastic_alpha=34.0, elastic_sigma=6.0, label_smoothing=0.1)
    loaders = make_loaders(load_mnist(idx_dir, None, CUSTOM_FILES, download=False), recipe, cuda)
    state = TrainState({"c3_table": True}, recipe, loaders, cuda)
    result = train_one_epoch(state, SyncsForbidden(loaders.train), log_interval=10**9)
    assert len(result.step_losses) == len(loaders.train) and all(math.isfinite(v) for v in result.step_losses)


def test_a_ctrl_c_while_the_epoch_is_recorded_keeps_that_epoch(idx_dir, monkeypatch):
    """A real SIGINT inside the end-of-epoch snapshot: the run stops with that epoch, never the one before."""
    state, loaders = setup(idx_dir, Recipe(epochs=3, batch_size=16))
    snapshot, calls = TrainState.state_dict, []

    def signalled_snapshot(self):
        calls.append(1)
        if len(calls) == 2:  # the first is fit()'s starting point; the second, epoch 1's record
            os.kill(os.getpid(), signal.SIGINT)
        return snapshot(self)

    monkeypatch.setattr(TrainState, "state_dict", signalled_snapshot)
    with pytest.raises(TrainingInterrupted) as stop:
        run_fit(state, loaders)
    assert stop.value.state["epoch"] == 1 and len(stop.value.state["history"]["epochs"]) == 1


def test_the_map_loss_uses_the_recipes_constant():
    """--map-j reaches the loss that training minimises."""
    from lecun1998.training import map_loss
    from support.recipes import resolve_recipe
    from train import loss_function

    outputs, labels = -torch.tensor([[0.5, 3.0, 40.0], [2.0, 1.0, 9.0]]), torch.tensor([0, 2])
    for j in (0.1, 3.0):
        loss = loss_function(resolve_recipe("lecun1998", {"map_j": j}))(outputs, labels)
        assert torch.allclose(loss, map_loss(outputs, labels, j) / 2)
    assert not torch.allclose(map_loss(outputs, labels, 0.1), map_loss(outputs, labels, 3.0))
