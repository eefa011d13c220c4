"""The training loop: an optimizer step on the cross-entropy of every batch, one epoch at a time, and the
training state it updates. The default recipe (support/recipes.py) is SGD at lr 0.01 with Nesterov momentum.

Read train_one_epoch() top to bottom: that is all of training. TrainState holds what the next
step depends on (model, optimizer, schedule, random generators, history) and saves and restores
it whole, so a resumed run matches an uninterrupted one bit for bit. fit() runs the epochs and
turns a Ctrl-C into the state at the last finished epoch. Under torchrun the same code runs in
every process; what is distributed (DDP, the sums over processes, the stop flag) is in distributed.py.

No host synchronisation per step: losses and accuracies are accumulated on the device and read
back (``.item()``) only at log intervals and at the end of each epoch.
"""

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from support.cli import UserError

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from data import Loaders
from lecun1998.training import SDLM, curvature, global_step, map_loss
from LeNet5 import LeNet5
from support.devices import compile_network, place_batch, place_model
from support.distributed import ONE, StopFlag, World, gather, peer_failure, sum_over_ranks
from support.optimizers import make_optimizer
from support.recipes import Recipe

# A uniform guess over 10 digits costs ln(10) = 2.3; ten times that means the weights are exploding. (The 1998
# MAP criterion starts near 84, the RBF penalties' size: only a loss beyond any penalty means it there.)
EXPLODED_LOSS = 10 * math.log(10)
EXPLODED_MAP_LOSS = 1000.0


class TrainingDiverged(UserError):
    """The loss became NaN, infinite or exploded; the weights are not worth saving."""

    everywhere = True  # the loss it judges is averaged over all processes: they all stop alike


class TrainingInterrupted(Exception):
    """Ctrl-C, SIGTERM or, under torchrun, a failed peer: carries the TrainState.state_dict() of the last
    completed epoch, ready to save and resume; `failure` says which peer failed, if one did."""

    def __init__(self, state: dict[str, Any], failure: str | None = None):
        super().__init__(failure or f"interrupted after epoch {state['epoch']}")
        self.state, self.failure = state, failure


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float  # mean over the epoch's steps
    train_accuracy: float  # on the augmented batches, while the weights were changing
    seconds: float
    images_per_second: float
    eval_split: str  # "val" or "test"
    eval_accuracy: float
    finished_at: float  # time.time() at the end of the epoch: gives cold-start time to an accuracy
    compiled: bool = False  # its steps went through torch.compile (main.py --compile): its seconds depend on it


@dataclass
class History:
    steps_per_epoch: int
    step_losses: list[float] = field(default_factory=list)
    epochs: list[EpochStats] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {"steps_per_epoch": self.steps_per_epoch, "step_losses": list(self.step_losses),
                "epochs": [asdict(e) for e in self.epochs]}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_per_epoch = state["steps_per_epoch"]
        self.step_losses = list(state["step_losses"])
        self.epochs = [EpochStats(**e) for e in state["epochs"]]


class WeightAverage:
    """An exponential moving average of a model's weights, updated after every step; with a short
    warm-up (decay (1 + t) / (10 + t) until it reaches `decay`) so early weights fade fast.

    Not torch.optim.swa_utils.AveragedModel: its update reads a device counter on the host
    (`if n_averaged == 0`), a sync per step on a GPU; here the step count lives on the host.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.model = copy.deepcopy(model).requires_grad_(False)
        self.parameters = list(self.model.parameters())
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.parameters, list(model.parameters()), 1 - decay)  # as swa_utils' EMA does


def make_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step learning-rate multiplier: large steps first, small ones to settle at the end."""
    total = max(1, recipe.epochs * steps_per_epoch)
    factors = {
        "linear": lambda step: max(0.0, 1 - step / total),
        "cosine": lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)),
        "constant": lambda step: 1.0,
        # the 1998 paper's global step, pass by pass, relative to its first (appendix C)
        "lecun1998": lambda step: global_step(step // steps_per_epoch) / global_step(0),
    }
    if recipe.schedule not in factors:
        raise UserError(f"--schedule {recipe.schedule!r} is not one of {', '.join(factors)}")
    decay, warmup = factors[recipe.schedule], round(recipe.warmup_epochs * steps_per_epoch)
    if warmup == 0:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
    # A linear ramp over the first steps: with heavy momentum, full-size steps from random weights overshoot.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: decay(step) * min(1.0, (step + 1) / warmup))


class TrainState:
    """Model, its weight average, optimizer, scheduler, random generators, recipe and history: all the next step
    depends on, behind PyTorch's Stateful pair state_dict() / load_state_dict().

    Under torchrun, `network` is the model wrapped in DistributedDataParallel (it averages the
    gradients over the processes); with compiled=True, it goes through torch.compile too. `model` is always
    the plain LeNet5 that is saved and evaluated.
    """

    def __init__(self, config: dict[str, Any], recipe: Recipe, loaders: Loaders, device: torch.device,
                 world: World = ONE, compiled: bool = False):  # fmt: skip
        torch.manual_seed(recipe.seed)  # the initial weights (the same in every process)
        self.model = place_model(LeNet5(**config), device)
        self.recipe, self.device, self.world, self.compiled = recipe, device, world, compiled
        self.generators = loaders.generators
        self.average = WeightAverage(self.model, recipe.ema_decay) if recipe.ema_decay > 0 else None  # (before DDP)
        network = self.model  # with --compile, the training steps go through torch.compile; self.model is saved
        if compiled:
            network = compile_network(self.model, max(1, recipe.batch_size // world.size), device, world)
        # forward_sync_buffers=False: the only buffer, C3's connection mask, is a constant (and a
        # channels_last 16x6x1x1 tensor, which the per-step buffer broadcast refuses).
        self.network = DistributedDataParallel(network, forward_sync_buffers=False) if world.distributed else network
        self.optimizer = make_optimizer(self.model, recipe)
        self.scheduler = make_scheduler(self.optimizer, recipe, len(loaders.train))
        self.history = History(len(loaders.train))
        self.stop = StopFlag(world)

    @property
    def eval_model(self) -> nn.Module:
        """The model that is evaluated and saved: the weight average when the recipe keeps one."""
        return self.average.model if self.average else self.model

    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return len(self.history.epochs)

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (deep copy): later steps do not change it. Under torchrun every process must call it:
        the random generators of all of them are gathered (each distorts its images with its own)."""
        rng = {
            "torch": gather(torch.get_rng_state(), self.world),
            "shuffle": self.generators.shuffle.get_state(),
            "augment": gather(self.generators.augment.get_state(), self.world),
        }
        if torch.cuda.is_available():
            rng["cuda"] = gather(torch.cuda.get_rng_state(), self.world)
        state = {
            "model": self.eval_model.state_dict(),  # the weights a checkpoint is used with
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "recipe": asdict(self.recipe),
            "world_size": self.world.size,
            "epoch": self.epoch,
            "history": self.history.state_dict(),
        }
        if self.average:  # the trained weights go on from here; the average is what is used
            state["average"] = {"trained_model": self.model.state_dict(), "updates": self.average.updates}
        return copy.deepcopy(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The inverse of state_dict(). resume.Resume checks a saved state before it comes here."""
        if self.average:
            self.average.model.load_state_dict(state["model"])
            self.average.updates = state["average"]["updates"]
            self.model.load_state_dict(state["average"]["trained_model"])
        else:
            self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rank, rng = self.world.rank, state["rng"]
        torch.set_rng_state(rng["torch"][rank])
        self.generators.shuffle.set_state(rng["shuffle"])
        self.generators.augment.set_state(rng["augment"][rank])  # (one process: the same generator, same state)
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"][rank])
        self.history.load_state_dict(state["history"])


@dataclass(frozen=True)
class EpochResult:
    step_losses: list[float]  # averaged over the processes
    train_loss: float
    train_accuracy: float
    seconds: float
    images_per_second: float  # all processes together


def loss_function(recipe: Recipe) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss a recipe names: cross-entropy (with its label smoothing), or the 1998 paper's MAP criterion."""
    if recipe.loss == "map":
        return lambda outputs, labels: map_loss(outputs, labels, recipe.map_j) / len(labels)
    return lambda outputs, labels: F.cross_entropy(outputs, labels, label_smoothing=recipe.label_smoothing)


def train_one_epoch(state: TrainState, loader: DataLoader, log_interval: int = 200) -> EpochResult:
    """One pass over the training loader: forward, loss, backward, step, for every batch."""
    model, optimizer, scheduler = state.network, state.optimizer, state.scheduler
    device, world, epoch = state.device, state.world, state.epoch + 1
    loss_of = loss_function(state.recipe)
    if isinstance(optimizer, SDLM):  # the 1998 paper's optimizer: its curvature, from 500 patterns, before each pass
        patterns = curvature_patterns(loader, state.recipe.seed, epoch)
        optimizer.set_curvature(
            curvature(state.model, *patterns, j=state.recipe.map_j if state.recipe.loss == "map" else None)
        )
    model.train()
    step_losses, seen = [], 0
    correct = torch.zeros((), dtype=torch.int64, device=device)
    start = time.perf_counter()
    # disable=None: a bar on a terminal, none in a log file (nor on the other processes)
    bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False, dynamic_ncols=True,
               disable=None if world.is_main else True)  # fmt: skip
    for step, (images, labels) in enumerate(bar, start=1):
        images, labels = place_batch(images, device), labels.to(device, non_blocking=True)
        logits = model(images)  # N x 10
        loss = loss_of(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if state.average:
            state.average.update(state.model)
        state.stop.check(step)  # under torchrun: a Ctrl-C stops every process at the same step
        step_losses.append(loss.detach())
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += len(labels)
        if step % log_interval == 0:  # the only host syncs inside the epoch
            running = sum_over_ranks(torch.stack(step_losses[-log_interval:]).mean(), world).item() / world.size
            check_loss(running, epoch, step, state.recipe.loss)
            bar.set_postfix(loss=f"{running:.4f}", img_s=f"{world.size * seen / (time.perf_counter() - start):,.0f}")
            if world.is_main:
                tqdm.write(f"[{epoch}, {step:5d}] loss: {running:.4f}")
    losses = sum_over_ranks(torch.stack(step_losses).float(), world).cpu() / world.size
    check_loss(losses.mean().item(), epoch, len(step_losses), state.recipe.loss)
    seconds = time.perf_counter() - start
    correct, seen = sum_over_ranks(correct, world).item(), seen * world.size
    return EpochResult(losses.tolist(), losses.mean().item(), correct / max(1, seen), seconds, seen / seconds)


def curvature_patterns(loader: DataLoader, seed: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 500 training patterns (as they are, undistorted) that the 1998 optimizer's curvature is estimated on
    before pass `epoch`: drawn by the seed and the epoch alone, so a resumed run draws the same."""
    dataset = loader.dataset
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed * 1_000 + epoch))[:500]
    chosen = chosen.to(dataset.images.device)
    return place_batch(dataset.images[chosen], dataset.images.device), dataset.labels[chosen]


def check_loss(loss: float, epoch: int, step: int, kind: str = "cross_entropy") -> None:
    """Stop a run whose loss is not finite or has exploded: its weights are garbage."""
    if not math.isfinite(loss) or loss > (EXPLODED_MAP_LOSS if kind == "map" else EXPLODED_LOSS):
        raise TrainingDiverged(
            f"the loss {'became' if not math.isfinite(loss) else 'exploded to'} {loss:.4g} at epoch {epoch}, "
            f"step {step}: training stopped and nothing was saved; lower --lr or check the data"
        )


@torch.inference_mode()
def accuracy(model: nn.Module, loader: DataLoader, device: torch.device, world: World = ONE) -> float:
    """Accuracy over the loader's images, or over all processes' shards together."""
    was_training = model.training
    model.eval()
    correct, seen = torch.zeros((), dtype=torch.int64, device=device), 0
    for images, labels in loader:
        correct += (model(place_batch(images, device)).argmax(1) == labels.to(device)).sum()
        seen += len(labels)
    model.train(was_training)
    counts = sum_over_ranks(torch.tensor([correct.item(), seen]), world)
    return counts[0].item() / counts[1].item()


def fit(
    state: TrainState, loaders: Loaders, log_interval: int = 200, on_epoch: Callable[[TrainState], None] | None = None
) -> History:
    """Train from state.epoch to state.recipe.epochs, one summary line per epoch; returns the history.

    Ctrl-C (or a failed peer under torchrun) raises TrainingInterrupted with the state at the last epoch
    boundary, which this process holds without any collective. on_epoch(state) is called at every
    epoch's end, once its stats are in state.history (main.py: TensorBoard).
    """
    boundary = state.state_dict()
    while state.epoch < state.recipe.epochs:
        try:  # a Ctrl-C anywhere in here falls back to the last complete epoch
            with state.stop:
                boundary = train_and_evaluate_epoch(state, loaders, log_interval, on_epoch)
        except KeyboardInterrupt:
            raise TrainingInterrupted(boundary) from None
        except RuntimeError as err:  # a collective broke: another process died or went silent
            failure = peer_failure(err, state.world)
            if failure is None:
                raise
            raise TrainingInterrupted(boundary, f"{failure} during epoch {boundary['epoch'] + 1}") from None
    return state.history


def train_and_evaluate_epoch(
    state: TrainState, loaders: Loaders, log_interval: int, on_epoch: Callable[[TrainState], None] | None = None
) -> dict[str, Any]:
    """One epoch, its held-out accuracy and summary line; returns the state snapshot at its end."""
    r = train_one_epoch(state, loaders.train, log_interval)
    held_out = accuracy(state.eval_model, loaders.held_out, state.device, state.world)
    with state.stop.holding():  # the epoch is done: a Ctrl-C from here on keeps it rather than falling back
        stats = EpochStats(state.epoch + 1, r.train_loss, r.train_accuracy, r.seconds, r.images_per_second,
                           loaders.held_out_split, held_out, time.time(), state.compiled)  # fmt: skip
        state.history.step_losses += r.step_losses
        state.history.epochs.append(stats)
        if state.world.is_main:
            print(summary_line(stats, state.recipe.epochs), flush=True)
        if on_epoch is not None:
            on_epoch(state)
        completed = state.state_dict()
    if state.stop.agreed():  # a Ctrl-C during the evaluation (torchrun) or the record (any world): keep this epoch
        raise TrainingInterrupted(completed)
    return completed


def summary_line(stats: EpochStats, epochs: int) -> str:
    return (
        f"epoch {stats.epoch}/{epochs}: train loss {stats.train_loss:.4f}, "
        f"train acc {100 * stats.train_accuracy:.2f}%, {stats.eval_split} acc {100 * stats.eval_accuracy:.2f}%, "
        f"{stats.seconds:.1f}s ({stats.images_per_second:,.0f} img/s)"
    )
