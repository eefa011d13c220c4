"""The training loop: SGD on cross-entropy, one summary line per epoch, a resumable state.

No per-step host synchronisation: losses and accuracies are accumulated on the device and
read back (``.item()``) only at log intervals and at the end of each epoch.
"""

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from eval import predict
from helper import UserError


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights; main.py's flags take their defaults from here."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.01  # the write-up's learning rate: the peak of the schedule
    momentum: float = 0.95
    nesterov: bool = True
    weight_decay: float = 0.0
    schedule: str = "linear"  # per step: "linear" decays to 0, "cosine" likewise, "constant" keeps lr
    augment: bool = True  # random rotation, scale and shift of each training batch
    seed: int = 0
    val_size: int = 0  # training images held out for validation
    limit: int | None = None  # use only the first N training and test images


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the weights are not worth saving."""


class TrainingInterrupted(Exception):
    """Ctrl-C: carries the state at the last completed epoch, ready to save and resume."""

    def __init__(self, state: dict[str, Any]):
        super().__init__(f"interrupted after epoch {state['epoch']}")
        self.state = state


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.SGD:
    return torch.optim.SGD(
        model.parameters(),
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov and recipe.momentum > 0,
        weight_decay=recipe.weight_decay,
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step learning-rate multiplier: large steps first, small ones to settle at the end."""
    total = max(1, recipe.epochs * steps_per_epoch)
    factors = {
        "linear": lambda step: max(0.0, 1 - step / total),
        "cosine": lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)),
        "constant": lambda step: 1.0,
    }
    if recipe.schedule not in factors:
        raise UserError(f"--schedule {recipe.schedule!r} is not one of {', '.join(factors)}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors[recipe.schedule])


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    epoch: int,
    log_interval: int = 200,
    progress: bool = True,
) -> dict[str, Any]:
    """One pass over the training loader; returns the per-step losses and the epoch's statistics."""
    model.train()
    step_losses, seen = [], 0
    correct = torch.zeros((), dtype=torch.int64, device=device)
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False, dynamic_ncols=True, disable=not progress)
    for step, (images, labels) in enumerate(bar, start=1):
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        logits = model(images)  # N x 10
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step_losses.append(loss.detach())
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += len(labels)
        if step % log_interval == 0:  # the only host syncs inside the epoch
            running = torch.stack(step_losses[-log_interval:]).mean().item()
            _check_finite(running, epoch, step)
            rate = seen / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{running:.4f}", img_s=f"{rate:,.0f}")
            tqdm.write(f"[{epoch}, {step:5d}] loss: {running:.4f}")
    losses = torch.stack(step_losses).float().cpu()
    _check_finite(losses.mean().item(), epoch, len(step_losses))
    seconds = time.perf_counter() - start
    return {
        "step_losses": losses.tolist(),
        "train_loss": losses.mean().item(),
        "train_accuracy": correct.item() / max(1, seen),
        "seconds": seconds,
        "images_per_second": seen / seconds,
    }


def _check_finite(loss: float, epoch: int, step: int) -> None:
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"the loss became {loss} at epoch {epoch}, step {step}: training stopped and nothing was saved; "
            "lower --lr or check the data"
        )


def accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    logits, labels = predict(model, loader, device)
    return (logits.argmax(1) == labels).double().mean().item()


def capture_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    recipe: Recipe,
    epoch: int,
    history: dict[str, Any],
) -> dict[str, Any]:
    """A deep copy of everything the next epoch depends on, so a resumed run matches an uninterrupted one."""
    rng = {"torch": torch.get_rng_state(), "loader": generator.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng,
        "recipe": asdict(recipe),
        "epoch": epoch,
        "history": history,
    }
    return copy.deepcopy(state)


def restore_state(
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
) -> None:
    """Undo capture_state (the model's weights are restored by the caller, from the checkpoint)."""
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    generator.set_state(state["rng"]["loader"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def new_history(steps_per_epoch: int) -> dict[str, Any]:
    return {"steps_per_epoch": steps_per_epoch, "step_losses": [], "epochs": []}


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train_loader: DataLoader,
    eval_loader: DataLoader,
    generator: torch.Generator,
    recipe: Recipe,
    device: torch.device,
    history: dict[str, Any],
    eval_split: str = "test",
    log_interval: int = 200,
) -> dict[str, Any]:
    """Train from len(history["epochs"]) to recipe.epochs; returns the history (also updated in place).

    Ctrl-C raises TrainingInterrupted with the state at the last epoch boundary.
    """
    first = len(history["epochs"]) + 1
    boundary = capture_state(model, optimizer, scheduler, generator, recipe, first - 1, history)
    for epoch in range(first, recipe.epochs + 1):
        try:  # a Ctrl-C anywhere in here falls back to the last complete epoch
            stats = train_one_epoch(model, train_loader, optimizer, scheduler, device, epoch, log_interval)
            eval_accuracy = accuracy(model, eval_loader, device)
            history["step_losses"] += stats.pop("step_losses")
            stats.update(eval_split=eval_split, eval_accuracy=eval_accuracy, finished_at=time.time())
            history["epochs"].append({"epoch": epoch, **stats})
            print(
                f"epoch {epoch}/{recipe.epochs}: train loss {stats['train_loss']:.4f}, "
                f"train acc {100 * stats['train_accuracy']:.2f}%, {eval_split} acc {100 * eval_accuracy:.2f}%, "
                f"{stats['seconds']:.1f}s ({stats['images_per_second']:,.0f} img/s)",
                flush=True,
            )
            boundary = capture_state(model, optimizer, scheduler, generator, recipe, epoch, history)
        except KeyboardInterrupt:
            raise TrainingInterrupted(boundary) from None
    return history
