"""I/O helpers: the project folder, user errors, atomic writes, checkpoints and plots."""

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from LeNet5 import LeNet5

PROJECT_DIR = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = PROJECT_DIR / "checkpoints" / "lenet5.pt"  # what main.py writes and the others read
DEFAULT_REPORT_DIR = PROJECT_DIR / "reports"
CHECKPOINT_FORMAT = 1


class UserError(Exception):
    """A mistake the user can fix (missing file, bad flag, wrong checkpoint): one line, exit 2."""


class CheckpointError(UserError):
    """A checkpoint that is missing, damaged, unsafe or of another architecture."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after every flag; the module docstring printed as written."""


class CliParser(argparse.ArgumentParser):
    """argparse with the project's conventions: defaults in --help, one-line errors (exit 2)."""

    def __init__(self, description: str | None):
        super().__init__(description=description, formatter_class=_HelpFormatter)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """Run an entry point: user errors become one line on stderr and exit status 2, no traceback."""
    try:
        main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C outside training (which saves its own state): nothing to save
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU; an unavailable explicit choice is a UserError."""
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
    }
    if name == "auto":
        name = "cuda" if available["cuda"] else "mps" if available["mps"] else "cpu"
    if not available.get(name, False):
        raise UserError(f"--device {name} is not available on this machine; use --device cpu or auto")
    return torch.device(name)


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write to a temp file in the same directory, then os.replace: readers never see half a file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}; choose another location") from None
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def ensure_writable_dir(directory: Path) -> None:
    """Fail before a long run, not after it, when its outputs could not be written."""
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {directory}: {err.strerror or err}; choose another location") from None
    if not os.access(directory, os.W_OK):
        raise UserError(f"cannot write into {directory}: permission denied; choose another location")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f))


def write_json(obj: Any, path: Path) -> None:
    _atomic_write(path, lambda f: json.dump(obj, f, indent=2), mode="w")


def save_model(
    path: Path,
    model: nn.Module,
    epoch: int,
    metrics: dict[str, Any],
    normalization: dict[str, float],
    train_state: dict[str, Any] | None = None,
) -> None:
    """Save a checkpoint dict (state_dict + constructor config + metadata), atomically.

    train_state (optimizer, scheduler, RNG states, recipe, history) makes it resumable.
    """
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "architecture": type(model).__name__,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": dict(model.config),
        "epoch": epoch,
        "metrics": metrics,
        "normalization": normalization,
        "torch_version": str(torch.__version__),
    }
    if train_state is not None:
        checkpoint["train_state"] = train_state
    atomic_torch_save(checkpoint, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint safely (weights_only=True: a pickle that would run code is refused)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; train one with `python main.py` or pass --weights PATH")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            reason = "it contains Python objects that would run code on load (refused for safety)"
        raise CheckpointError(f"{path}: not a readable checkpoint: {reason}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "config" not in checkpoint:
        raise CheckpointError(f"{path}: not a checkpoint of this project (no state_dict/config); retrain it")
    return checkpoint


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild LeNet5 from a checkpoint's config and load its weights; returns (model in eval mode, checkpoint)."""
    checkpoint = load_checkpoint(path)
    if checkpoint.get("architecture", "LeNet5") != "LeNet5":
        raise CheckpointError(f"{path}: holds a {checkpoint['architecture']}, not a LeNet5")
    try:
        model = LeNet5(**checkpoint["config"])
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit LeNet5 ({first})") from None
    return model.to(device, memory_format=torch.channels_last).eval(), checkpoint


def pyplot():
    """matplotlib with the file-only Agg backend, imported on first use (keeps start-up fast)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    plt = pyplot()
    _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)


def plot_loss(step_losses: list[float], steps_per_epoch: int, path: Path) -> None:
    """The training loss at every step, with each epoch's mean (the write-up's loss plot)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = (torch.arange(1, len(step_losses) + 1) / steps_per_epoch).numpy()
    ax.plot(steps, step_losses, lw=0.5, alpha=0.5, label="per step")
    epochs = len(step_losses) // steps_per_epoch
    means = torch.tensor(step_losses[: epochs * steps_per_epoch]).reshape(epochs, -1).mean(1)
    ax.plot(range(1, epochs + 1), means.numpy(), "o-", label="epoch mean")
    ax.set(xlabel="epoch", ylabel="cross-entropy loss", yscale="log", title="LeNet-5 training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_accuracy(epochs: list[dict[str, Any]], path: Path) -> None:
    """Train and held-out accuracy per epoch."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    numbers = [e["epoch"] for e in epochs]
    ax.plot(numbers, [100 * e["train_accuracy"] for e in epochs], "o-", label="train (augmented, during the epoch)")
    held_out = epochs[0]["eval_split"]
    ax.plot(numbers, [100 * e["eval_accuracy"] for e in epochs], "o-", label=held_out)
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title="LeNet-5 accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_confusion_matrix(matrix: list[list[int]], path: Path) -> None:
    """Heatmap with counts; rows are the true digit, columns the prediction."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    cm = torch.tensor(matrix, dtype=torch.float64)
    image = ax.imshow(torch.log1p(cm).numpy(), cmap="Blues")  # log scale: the diagonal would drown the errors
    for (i, j), count in zip(torch.cartesian_prod(torch.arange(10), torch.arange(10)).tolist(), cm.flatten()):
        dark = image.norm(image.get_array()[i, j]) > 0.6
        ax.text(j, i, f"{int(count)}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted digit", ylabel="true digit", title="Confusion matrix")
    save_figure(fig, path)
