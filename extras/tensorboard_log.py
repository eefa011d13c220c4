"""Training curves for TensorBoard (`python main.py --tensorboard runs`, then `tensorboard --logdir runs`).

Each run gets a folder of its own under the given one, named YYYYMMDD-HHMMSS_<recipe>-seed<N> so that
runs sort by start time. In it:

- scalars: the loss and learning rate of every step (train/), the train and held-out accuracy of
  every epoch (epoch/), and the final test accuracy (final/). (An epoch's mean loss is not a chart of its
  own: with a point or two per run, TensorBoard's default "ignore outliers" scaling drew it off the chart;
  the per-step loss, smoothed, shows it.)
- histograms of every weight and bias, and the six C1 kernels with their colour scale, at every epoch's end;
- the most confidently wrong test digits at the end, drawn for TensorBoard's card (12, captions readable
  without "show actual image size");
- the settings the recipe used as hparams, in their own types (booleans as booleans), beside the final
  metrics; settings that did nothing in this run (beta2 for SGD, the distortions without --augment,
  ema_decay 0, ...) are left out.

Everything is read from what training keeps anyway (TrainState.history, at each epoch's end), so
the loop gets no extra host synchronisation. A log made without a folder does nothing: that is
what the other processes under torchrun, and runs without --tensorboard, get.
"""

import contextlib
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eval import Evaluation
from support.figures import filters_figure, misclassified_figure
from support.optional import OptionalPart
from support.recipes import DISTORTIONS, Recipe, run_name
from train import EpochStats, TrainState


class TensorBoardLog:
    """The log of one run. An optional part (support/optional.py): a log that cannot be written (a full disk, its
    folder removed mid-run) is one warning, then skipped; training goes on and the checkpoint is saved."""

    def __init__(self, run_dir: Path | None):
        self.run_dir = run_dir
        self.writer = None
        self.part = OptionalPart("the TensorBoard log")
        if run_dir is not None:
            self.writer = self.part(lambda: _summary_writer(run_dir))
            self._thread_errors = _route_writer_thread_errors(self.part)
        self.steps_logged = self.epochs_logged = 0

    def close(self) -> None:
        """Close the files (quietly, when the log has failed) and put back the threads' error hook."""
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
            self.writer = None
        if getattr(self, "_thread_errors", None) is not None:
            threading.excepthook, self._thread_errors = self._thread_errors, None

    @classmethod
    def start(cls, root: Path | None, recipe: Recipe) -> "TensorBoardLog":
        """A new run folder under `root` (None: a log that does nothing)."""
        if root is None:
            return cls(None)
        name = run_name(recipe.name, recipe.seed)
        run_dir = Path(root) / name
        for n in range(2, 1000):  # two runs started in the same second must not share a folder
            if not run_dir.exists():
                break
            run_dir = Path(root) / f"{name}-{n}"
        return cls(run_dir)

    @property
    def enabled(self) -> bool:
        return self.writer is not None and not self.part.failed

    def _guarded(self, action: Callable[[], Any]) -> Any:
        """action() as an optional part; after a failure the writer is closed and the log stays off."""
        result = self.part(action)
        if self.part.failed:
            self.close()
        return result

    def log_steps(self, losses: Sequence[float], lrs: Sequence[float] | None, first_step: int) -> None:
        """Per-step training loss (and learning rate), steps numbered from 1 over the whole run."""
        if not self.enabled:
            return
        for i, loss in enumerate(losses):
            self.writer.add_scalar("train/loss", loss, first_step + i)
            if lrs is not None:
                self.writer.add_scalar("train/learning_rate", lrs[i], first_step + i)

    def log_epoch(self, stats: EpochStats, model: nn.Module | None = None) -> None:
        """The epoch's mean loss and accuracies; with the model, its weight histograms and C1 kernels."""
        if not self.enabled:
            return
        self.writer.add_scalar("epoch/train_accuracy", stats.train_accuracy, stats.epoch)
        self.writer.add_scalar(f"epoch/{stats.eval_split}_accuracy", stats.eval_accuracy, stats.epoch)
        if model is not None:
            for name, value in model.named_parameters():
                self.writer.add_histogram(f"weights/{name}", value.detach().float().cpu(), stats.epoch)
            self.writer.add_figure("c1_kernels", filters_figure(model), stats.epoch)

    def after_epoch(self, state: TrainState) -> None:
        """For train.fit's on_epoch: whatever the history holds that is not logged yet (after a
        --resume, the epochs before it too), then this epoch's weights; written to disk at once."""
        if self.enabled:
            self._guarded(lambda: self._log_new_epochs(state))

    def _log_new_epochs(self, state: TrainState) -> None:
        history, lr_at = state.history, scheduled_lr(state.scheduler)
        new_losses = history.step_losses[self.steps_logged :]
        first = self.steps_logged + 1
        lrs = None if lr_at is None else [lr_at(step) for step in range(first, first + len(new_losses))]
        self.log_steps(new_losses, lrs, first)
        for stats in history.epochs[self.epochs_logged :]:
            self.log_epoch(stats, state.eval_model if stats is history.epochs[-1] else None)
        self.steps_logged, self.epochs_logged = len(history.step_losses), len(history.epochs)
        self.writer.flush()

    def finish(self, recipe: Recipe, config: dict[str, Any], result: Evaluation, images: torch.Tensor) -> list[Path]:
        """The final metrics, the hparams and the misclassified digits; closes the files. Returns the run folder.
        images: the evaluated test images, in the order of `result`."""
        if not self.enabled:
            return []
        written = self._guarded(lambda: self._finish(recipe, config, result, images))
        return written or []

    def _finish(self, recipe: Recipe, config: dict[str, Any], result: Evaluation, images: torch.Tensor) -> list[Path]:
        metrics = {"final/test_accuracy": result.accuracy}
        wrong = misclassified_figure(images, result.labels, result.predictions, result.probabilities, 12, 4, 14)
        self.writer.add_figure("misclassified", wrong)
        for summary in hparam_summaries(recipe_hparams(recipe, config), metrics):
            # (add_hparams would write them through a second writer, into a sub-folder: a run of its own)
            self.writer._get_file_writer().add_summary(summary)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value)
        self.writer.flush()
        self.close()
        return [self.run_dir]


def recipe_hparams(recipe: Recipe, config: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """The settings this run used, in their own types: those that did nothing in it are left out."""
    values = {**asdict(recipe), **config}
    unused = {"beta2"} if recipe.optimizer == "sgd" else {"nesterov"}
    if not recipe.augment:
        unused |= set(DISTORTIONS)
    elif recipe.elastic_alpha == 0:
        unused |= {"elastic_alpha", "elastic_sigma"}  # (alpha 0: no elastic distortion)
    unused |= {name for name in ("ema_decay", "warmup_epochs", "weight_decay") if values[name] == 0}
    unused |= {name for name, value in values.items() if value is None}  # limit: all the data
    return {name: value for name, value in values.items() if name not in unused}


def hparam_summaries(params: dict[str, bool | int | float | str], metrics: dict[str, float]) -> tuple:
    """torch's hparams() summaries, with booleans as TensorBoard booleans: torch tests for numbers before
    booleans, and a bool is an int, so it would show True as 1.0000."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
    from torch.utils.tensorboard.summary import hparams

    booleans = {name for name, value in params.items() if isinstance(value, bool)}
    experiment, start, end = hparams({k: str(v) if k in booleans else v for k, v in params.items()}, metrics)
    for summary, fix in ((experiment, _bool_infos), (start, _bool_values)):
        data = plugin_data_pb2.HParamsPluginData.FromString(summary.value[0].metadata.plugin_data.content)
        fix(data, {name: params[name] for name in booleans}, api_pb2)
        summary.value[0].metadata.plugin_data.content = data.SerializeToString()
    return experiment, start, end


def _bool_infos(data, booleans: dict[str, bool], api_pb2) -> None:
    for info in data.experiment.hparam_infos:
        if info.name in booleans:
            info.type = api_pb2.DATA_TYPE_BOOL


def _bool_values(data, booleans: dict[str, bool], api_pb2) -> None:
    for name, value in booleans.items():
        data.session_start_info.hparams[name].bool_value = value


def _route_writer_thread_errors(part: OptionalPart) -> Callable:
    """The event files are written by a thread of TensorBoard's own; when a write fails there (a full disk, the
    folder removed), that thread dies with a traceback on stderr. It becomes the part's one warning instead.
    Returns the hook it replaced."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        frames = traceback.extract_tb(args.exc_traceback) if args.exc_traceback else []
        if any("tensorboard" in frame.filename and "writer" in frame.filename for frame in frames):
            part.fail(args.exc_value)
        else:
            previous(args)

    threading.excepthook = hook
    return previous


def _summary_writer(run_dir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir))


def scheduled_lr(scheduler: Any) -> Callable[[int], float] | None:
    """The learning rate of each step (from 1) of a LambdaLR, from its own factor: no optimizer state is read."""
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return None
    base, factor = scheduler.base_lrs[0], scheduler.lr_lambdas[0]
    return lambda step: base * factor(step - 1)  # step n runs after n - 1 scheduler steps
