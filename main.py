"""Train LeNet-5 on MNIST, save the weights, report test accuracy and plot the loss.

    python main.py --data-dir ../shared/mnist          # or MNIST_DIR=../shared/mnist python main.py

Ctrl-C saves a resumable checkpoint; `python main.py --resume PATH` continues it.
"""

import argparse
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from cli import (
    DEFAULT_CHECKPOINT,
    CliParser,
    UserError,
    add_device_flag,
    add_report_dir_flag,
    check_output_dir,
    check_output_file,
    interrupts_deferred,
    number,
    run_cli,
)

import torch

from data import Loaders, add_data_args, add_limit_flag, data_source, fingerprint, make_loaders
from devices import choose_device
from distributed import World, agree, exit_skipping_teardown, join, one_job
from eval import REPORT_FILES, Evaluation, evaluate, format_report, write_report
from helper import save_checkpoint
from LeNet5 import LeNet5, count_parameters, layer_table
from recipes import AFFINE_LIMITS, OPTIMIZERS, RECIPES, SCHEDULES, Recipe, resolve_recipe
from resume import InterruptedRun, Resume, continue_command, finished_path, resume_path
from tensorboard_log import TensorBoardLog
from train import History, TrainingInterrupted, TrainState, fit
from visualize import plot_accuracy, plot_loss


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CliParser(__doc__)
    add_data_args(p)
    add_recipe_args(p)
    add_device_flag(p)
    out = f"checkpoint to write, .json beside it (default: {DEFAULT_CHECKPOINT}; with --resume, the interrupted run's)"
    p.add_argument("--out", type=Path, help=out)
    add_report_dir_flag(p)
    p.add_argument("--resume", type=Path, help="continue a checkpoint saved by Ctrl-C, with its own recipe and data")
    p.add_argument("--log-interval", type=number(int, 1), default=200, help="print the running loss every N steps")
    tensorboard = "also log curves, weights and images for TensorBoard into a new run folder under DIR"
    p.add_argument("--tensorboard", type=Path, metavar="DIR", help=tensorboard)
    args = p.parse_args(argv)
    args.out = args.out or (finished_path(args.resume) if args.resume else DEFAULT_CHECKPOINT)
    return args


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    """The recipe flags. They are absent from the parsed args unless given, so --resume can tell which were."""
    defaults = Recipe()
    g = p.add_argument_group("training recipe: --recipe picks the starting values, the other flags override them")
    names = "; ".join(f"{name}: {line}" for name, (line, _) in RECIPES.items()).replace("%", "%%")  # argparse
    g.add_argument("--recipe", default=argparse.SUPPRESS, choices=RECIPES, help=f"{names} (default: default)")

    def flag(name: str, help: str, **kwargs) -> None:
        default = getattr(defaults, name[2:].replace("-", "_"), None)
        shown = f" (default: {default})" if default is not None else ""
        g.add_argument(name, default=argparse.SUPPRESS, help=help + shown, **kwargs)

    flag("--epochs", "passes over the training set", type=number(int, 1, 10_000))
    flag("--batch-size", "training images per optimizer step", type=number(int, 1))
    flag("--optimizer", "torch.optim.SGD, Adam, AdamW, or muon (Muon on C5 and F6, AdamW on the rest)",
         choices=OPTIMIZERS)  # fmt: skip
    flag("--lr", "learning rate, the schedule's peak", type=number(float, 0, low_open=True))
    flag("--momentum", "SGD momentum, or Adam's beta1 (muon: AdamW's)", type=number(float, 0, 0.999))
    flag("--beta2", "Adam's second-moment decay", type=number(float, 0, 0.9999))
    flag("--nesterov", "Nesterov momentum (SGD)", action=argparse.BooleanOptionalAction)
    flag("--weight-decay", "L2 penalty (AdamW and muon: decoupled weight decay)", type=number(float, 0))
    flag("--schedule", "per-step learning-rate schedule", choices=SCHEDULES)
    flag("--warmup-epochs", "linear learning-rate ramp from 0 at the start", type=number(float, 0, 100))
    flag("--augment", "random rotation, zoom and shift of training images", action=argparse.BooleanOptionalAction)
    limit = AFFINE_LIMITS
    flag("--rotation", "with --augment: the largest rotation, degrees", type=number(float, 0, limit["rotation"]))
    flag("--zoom", "with --augment: the largest zoom in or out, a fraction", type=number(float, 0, limit["zoom"]))
    flag("--shift", "with --augment: the largest shift on each axis, pixels", type=number(float, 0, limit["shift"]))
    flag("--elastic-alpha", "with --augment: elastic distortion strength, pixels (0: off)", type=number(float, 0, 100))
    flag("--elastic-sigma", "smoothness of the elastic field, pixels", type=number(float, 0.5, 8))
    flag("--label-smoothing", "cross-entropy label smoothing", type=number(float, 0, 0.5))
    ema = "evaluate and save a moving average of the weights with this decay per step (0: off)"
    flag("--ema-decay", ema, type=number(float, 0, 0.9999))
    flag("--seed", "seed for weights, shuffling and augmentation", type=number(int, 0, 2**63 - 1))
    flag("--val-size", "training images held out for validation (0: test accuracy per epoch)", type=number(int, 0))
    add_limit_flag(g, default=argparse.SUPPRESS)
    flag("--full-c3", "connect every C3 map to all six S2 maps instead of LeCun's table", action="store_true")


def print_architecture(model: LeNet5) -> None:
    print(f"LeNet-5 ({'LeCun C3 table' if model.config['c3_table'] else 'full C3'}):")
    for name, description, params in layer_table(model):
        print(f"  {name:<7} {description:<34} {params:>7,}")
    print(f"  {'total':<42} {count_parameters(model):>7,} trainable parameters")


def recipe_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe flags given on the command line (absent ones are not in `args`), by Recipe field name."""
    given = {f.name: getattr(args, f.name) for f in fields(Recipe) if hasattr(args, f.name)}
    if hasattr(args, "recipe"):
        given["name"] = args.recipe
    if hasattr(args, "full_c3"):
        given["full_c3"] = args.full_c3
    return given


@dataclass(frozen=True)
class Setup:
    """What a run starts from, once every process has it."""

    recipe: Recipe
    config: dict[str, Any]  # LeNet5's constructor arguments
    loaders: Loaders
    data: dict[str, Any]  # the data's fingerprint and sizes, kept in the checkpoint
    resume: Resume | None  # the checked --resume file
    interrupted: InterruptedRun  # how this run saves itself when it is stopped


def prepare(args: argparse.Namespace, argv: list[str], world: World, device: torch.device) -> Setup:
    """Everything that can fail on one machine (paths, data, the resume file): all processes check in
    together, so that one failure ends the whole job with one line."""
    error = setup = None
    try:
        if world.is_main:
            check_outputs(args.out, args.report_dir)
            if args.tensorboard:
                check_output_dir(args.tensorboard, "--tensorboard")
        flags, resume = recipe_flags(args), None
        if args.resume:
            resume = Resume.open(args.resume, flags, world)
            recipe, config = resume.recipe, resume.config
        else:
            config = {"c3_table": not flags.pop("full_c3", False)}
            recipe = resolve_recipe(flags.pop("name", "default"), flags)
        mnist = data_source(args).open()
        data = {"fingerprint": fingerprint(mnist), "train": len(mnist.train_labels), "test": len(mnist.test_labels)}
        if resume:
            resume.check_data(data["fingerprint"])
        interrupted = InterruptedRun(args.out, config, data, continue_command(argv, world), world)
        setup = Setup(recipe, config, make_loaders(mnist, recipe, device, world), data, resume, interrupted)
    except UserError as err:
        error = err
    agree(error, world)
    return setup


def main(argv: list[str] | None = None) -> None:
    started = time.time()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parse_args(argv)
    world, device = join(choose_device(args.device))
    with one_job(world):
        setup = prepare(args, argv, world, device)
        processes = f" x {world.size} processes" if world.distributed else ""
        print(f"device: {device}{processes}; recipe: {asdict(setup.recipe)}")
        sizes = len(setup.loaders.train.dataset), setup.recipe.val_size, len(setup.loaders.test.dataset)
        print("data: {:,} training, {:,} validation, {:,} test images".format(*sizes))
        state = TrainState(setup.config, setup.recipe, setup.loaders, device, world)
        print_architecture(state.model)
        if setup.resume:
            setup.resume.restore(state)
        tensorboard = TensorBoardLog.start(args.tensorboard if world.is_main else None, setup.recipe)
        if tensorboard.enabled:
            print(
                f"TensorBoard: logging into {tensorboard.run_dir}; view with `tensorboard --logdir {args.tensorboard}`"
            )
        try:
            fit(state, setup.loaders, args.log_interval, on_epoch=tensorboard.after_epoch)
        except TrainingInterrupted as stop:
            setup.interrupted.save_and_exit(stop.state, f"after epoch {stop.state['epoch']}", stop.failure)
        final = state.state_dict()  # every process takes part; from here on, rank 0 alone works
        if world.is_main:
            report(state, final, setup, args, tensorboard, started)


def report(state: TrainState, final: dict[str, Any], setup: Setup, args: argparse.Namespace,
           tensorboard: TensorBoardLog, started: float) -> None:  # fmt: skip
    """Evaluate the trained model on the test set, save it with its metrics, write the report and figures."""
    try:
        result = evaluate(state.eval_model, setup.loaders.test, state.device)
    except KeyboardInterrupt:  # training is finished: keep it
        setup.interrupted.save_and_exit(final, "with training finished")
    with interrupts_deferred():
        paths = save_trained(args.out, final, setup, result, state.device, started)
        if setup.resume:
            setup.resume.finished(args.out)
    print(f"\n{format_report(result)}")
    paths += write_report(result, setup.loaders.test.dataset.images, args.report_dir, {"weights": str(args.out)})
    paths += plot_history(state.history, args.report_dir)
    paths += tensorboard.finish(setup.recipe, setup.config, result.accuracy, args.report_dir / "misclassified.png")
    print(f"total time {time.time() - started:.1f}s; wrote:", *[f"  {p}" for p in paths], sep="\n")


def check_outputs(out: Path, report_dir: Path) -> None:
    """Every output location, checked before any work starts."""
    if out.suffix == ".json":
        raise UserError(f"--out {out}: the checkpoint's metrics go beside it as .json; give a .pt name")
    check_output_file(out, "--out")
    check_output_file(out.with_suffix(".json"), "--out's metrics file")
    check_output_file(resume_path(out), "--out's resume file")
    check_output_dir(report_dir, "--report-dir", files=REPORT_FILES + HISTORY_FILES)


def save_trained(
    out: Path, training: dict[str, Any], setup: Setup, result: Evaluation, device: torch.device, started: float
) -> list[Path]:
    """The checkpoint (resumable: it carries the training state) and its metrics as JSON beside it."""
    epochs = training["history"]["epochs"]
    metrics = {
        "test_accuracy": result.accuracy,
        "per_class_accuracy": result.metrics()["per_class_accuracy"],
        "parameters": count_parameters(LeNet5(**setup.config)),
        "recipe": training["recipe"],
        "device": str(device),
        "processes": training["world_size"],
        "train_seconds": sum(e["seconds"] for e in epochs),
        "wall_seconds": time.time() - started,
        "epochs": epochs,
    }
    json_path = out.with_suffix(".json")
    save_checkpoint(out, setup.config, training, metrics, setup.data, metrics_json=json_path)  # replaced together
    return [out, json_path]


HISTORY_FILES = ("loss.png", "accuracy.png")  # what plot_history writes


def plot_history(history: History, report_dir: Path) -> list[Path]:
    paths = [report_dir / name for name in HISTORY_FILES]
    plot_loss(history.step_losses, history.steps_per_epoch, paths[0])
    epochs = history.epochs
    plot_accuracy(
        [e.epoch for e in epochs], [e.train_accuracy for e in epochs], [e.eval_accuracy for e in epochs],
        epochs[0].eval_split if epochs else "test", paths[1],
    )  # fmt: skip
    return paths


if __name__ == "__main__":
    exit_skipping_teardown(lambda: run_cli(main))
