"""Train LeNet-5 on MNIST, save the weights, report test accuracy and plot the loss.

    python main.py --data-dir ../shared/mnist          # or MNIST_DIR=../shared/mnist python main.py

Ctrl-C saves a resumable checkpoint; `python main.py --resume PATH` continues it.
"""

import os
import signal

if __name__ == "__main__":  # a Ctrl-C while torch is still loading: exit 130, no traceback (run_cli takes over)
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))

import argparse
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from data import Loaders, add_data_args, data_source, fingerprint, make_loaders
from eval import Evaluation, evaluate, format_report, write_report
from helper import (
    DEFAULT_CHECKPOINT,
    DEFAULT_REPORT_DIR,
    CliParser,
    UserError,
    check_output_dir,
    check_output_file,
    interrupts_deferred,
    load_checkpoint,
    number,
    place_model,
    resolve_device,
    run_cli,
    save_checkpoint,
    training_state,
    write_json,
)
from LeNet5 import LeNet5, count_parameters, layer_table
from train import SCHEDULES, History, Recipe, TrainingInterrupted, TrainState, fit
from visualize import plot_accuracy, plot_loss


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CliParser(__doc__)
    add_data_args(p)
    add_recipe_args(p)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="CUDA, MPS, else CPU")
    p.add_argument("--out", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint to write (+ .json beside it)")
    p.add_argument("--report-dir", type=Path, default=DEFAULT_REPORT_DIR, help="folder for metrics.json and figures")
    p.add_argument("--resume", type=Path, help="continue a checkpoint saved by Ctrl-C, with its own recipe and data")
    p.add_argument("--log-interval", type=number(int, 1), default=200, help="print the running loss every N steps")
    return p.parse_args(argv)


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    """The recipe flags. They are absent from the parsed args unless given, so --resume can tell which were."""
    defaults = Recipe()
    g = p.add_argument_group("training recipe (defaults: Recipe in train.py)")

    def flag(name: str, help: str, **kwargs) -> None:
        default = getattr(defaults, name[2:].replace("-", "_"), None)
        shown = f" (default: {default})" if default is not None else ""
        g.add_argument(name, default=argparse.SUPPRESS, help=help + shown, **kwargs)

    flag("--epochs", "passes over the training set", type=number(int, 1, 10_000))
    flag("--batch-size", "training images per SGD step", type=number(int, 1))
    flag("--lr", "SGD learning rate, the schedule's peak", type=number(float, 0, low_open=True))
    flag("--momentum", "SGD momentum", type=number(float, 0, 0.999))
    flag("--nesterov", "Nesterov momentum", action=argparse.BooleanOptionalAction)
    flag("--weight-decay", "L2 penalty", type=number(float, 0))
    flag("--schedule", "per-step learning-rate schedule", choices=SCHEDULES)
    flag("--augment", "random rotation, scale and shift of training images", action=argparse.BooleanOptionalAction)
    flag("--seed", "seed for weights, shuffling and augmentation", type=number(int, 0, 2**63 - 1))
    flag("--val-size", "training images held out for validation (0: test accuracy per epoch)", type=number(int, 0))
    flag("--limit", "use only the first N training and test images (default: all)", type=number(int, 1))
    flag("--full-c3", "connect every C3 map to all six S2 maps instead of LeCun's table", action="store_true")


def choose_recipe(args: argparse.Namespace, resumed: dict[str, Any] | None) -> tuple[Recipe, dict[str, Any]]:
    """(recipe, model config): from the flags, or from the checkpoint being resumed, refusing flags that differ."""
    given = {f.name: getattr(args, f.name) for f in fields(Recipe) if hasattr(args, f.name)}
    full_c3 = getattr(args, "full_c3", None)
    if resumed is None:
        return Recipe(**given), {"c3_table": not full_c3}
    saved, config = resumed["train_state"]["recipe"], resumed["config"]
    differ = [f"{_flag(k, v)} (it has {_flag(k, saved.get(k))})" for k, v in given.items() if saved.get(k) != v]
    if full_c3 and config.get("c3_table", True):
        differ.append("--full-c3 (the checkpoint uses LeCun's C3 table)")
    if differ:
        raise UserError(
            f"--resume continues the checkpoint's own recipe, and these flags differ from it: {'; '.join(differ)}. "
            "Drop them, or train anew without --resume"
        )
    return Recipe(**saved), config


def _flag(name: str, value: Any) -> str:
    flag = "--" + name.replace("_", "-")
    return (flag if value else f"--no-{flag[2:]}") if isinstance(value, bool) else f"{flag} {value}"


def print_architecture(model: LeNet5) -> None:
    print(f"LeNet-5 ({'LeCun C3 table' if model.config['c3_table'] else 'full C3'}):")
    for name, description, params in layer_table(model):
        print(f"  {name:<7} {description:<34} {params:>7,}")
    print(f"  {'total':<42} {count_parameters(model):>7,} trainable parameters")


def build_state(recipe: Recipe, config: dict[str, Any], loaders: Loaders, device: torch.device) -> TrainState:
    torch.manual_seed(recipe.seed)  # the initial weights
    model = place_model(LeNet5(**config), device)
    print_architecture(model)
    return TrainState(model, recipe, len(loaders.train), loaders.generator)


def resume_into(state: TrainState, checkpoint: dict[str, Any], path: Path, data_fingerprint: str) -> None:
    saved = checkpoint.get("data", {}).get("fingerprint")
    if saved != data_fingerprint:
        raise UserError(
            f"--resume {path} was trained on other data (fingerprint {saved}; these files give {data_fingerprint}); "
            "pass the --data-dir it was trained on"
        )
    state.load_state_dict(training_state(checkpoint))
    note = "nothing left to train; evaluating it" if state.epoch >= state.recipe.epochs else "continuing"
    print(f"resuming {path}: {state.epoch} of {state.recipe.epochs} epochs done, {note}")


def main(argv: list[str] | None = None) -> None:
    started = time.time()
    args = parse_args(argv)
    device = resolve_device(args.device)
    check_outputs(args.out, args.report_dir)
    resumed = load_checkpoint(args.resume, resumable=True) if args.resume else None
    recipe, config = choose_recipe(args, resumed)
    print(f"device: {device}; recipe: {asdict(recipe)}")
    data = data_source(args).open()
    data_info = {"fingerprint": fingerprint(data), "train": len(data.train_labels), "test": len(data.test_labels)}
    loaders = make_loaders(
        data, recipe.batch_size, recipe.seed, recipe.augment, recipe.val_size, recipe.limit, device=device
    )
    sizes = len(loaders.train.dataset), recipe.val_size, len(loaders.test.dataset)
    print("data: {:,} training, {:,} validation, {:,} test images".format(*sizes))
    state = build_state(recipe, config, loaders, device)
    if resumed:
        resume_into(state, resumed, args.resume, data_info["fingerprint"])
    held_out, split = (loaders.val, "val") if loaders.val is not None else (loaders.test, "test")
    try:
        fit(state, loaders.train, held_out, device, split, args.log_interval)
    except TrainingInterrupted as stop:
        exit_saving(stop.state, config, data_info, args.out, f"after epoch {stop.state['epoch']}")
    try:
        result = evaluate(state.model, loaders.test, device)
    except KeyboardInterrupt:  # training is finished: keep it
        exit_saving(state.state_dict(), config, data_info, args.out, "with training finished")
    with interrupts_deferred():
        paths = save_trained(args.out, state, config, data_info, result, device, started)
        if args.resume and args.resume.name.endswith(".resume.pt") and args.resume.resolve() != args.out.resolve():
            args.resume.unlink(missing_ok=True)  # the run it held is complete now
    print(f"\n{format_report(result)}")
    paths += write_report(result, loaders.test.dataset.images, args.report_dir, {"weights": str(args.out)})
    paths += plot_history(state.history, args.report_dir)
    print(f"total time {time.time() - started:.1f}s; wrote:", *[f"  {p}" for p in paths], sep="\n")


def check_outputs(out: Path, report_dir: Path) -> None:
    """Every output location, checked before any work starts."""
    if out.suffix == ".json":
        raise UserError(f"--out {out}: the checkpoint's metrics go beside it as .json; give a .pt name")
    check_output_file(out, "--out")
    check_output_file(out.with_suffix(".json"), "--out's metrics file")
    check_output_file(resume_path(out), "--out's resume file")
    check_output_dir(report_dir, "--report-dir")


def resume_path(out: Path) -> Path:
    return out.with_name(out.stem + ".resume.pt")


def exit_saving(training: dict[str, Any], config: dict[str, Any], data: dict[str, Any], out: Path, when: str) -> None:
    """Ctrl-C: save the resumable state, say how to continue, exit 130."""
    path = resume_path(out)
    with interrupts_deferred():
        save_checkpoint(path, config, training, data=data)
    print(f"\ninterrupted: saved the state {when} to {path}")
    print(f"continue with: python main.py --resume {path}", flush=True)
    sys.exit(130)


def save_trained(
    out: Path,
    state: TrainState,
    config: dict[str, Any],
    data: dict[str, Any],
    result: Evaluation,
    device: torch.device,
    started: float,
) -> list[Path]:
    """The checkpoint (resumable: it carries the training state) and its metrics as JSON beside it."""
    epochs = state.history.epochs
    metrics = {
        "test_accuracy": result.accuracy,
        "per_class_accuracy": result.metrics()["per_class_accuracy"],
        "parameters": count_parameters(state.model),
        "recipe": asdict(state.recipe),
        "device": str(device),
        "train_seconds": sum(e.seconds for e in epochs),
        "wall_seconds": time.time() - started,
        "epochs": [asdict(e) for e in epochs],
    }
    json_path = out.with_suffix(".json")
    json_path.unlink(missing_ok=True)  # a crash between the two writes leaves no stale .json beside a new .pt
    save_checkpoint(out, config, state.state_dict(), metrics, data)
    write_json(metrics, json_path)
    return [out, json_path]


def plot_history(history: History, report_dir: Path) -> list[Path]:
    paths = [report_dir / "loss.png", report_dir / "accuracy.png"]
    plot_loss(history.step_losses, history.steps_per_epoch, paths[0])
    epochs = history.epochs
    plot_accuracy(
        [e.epoch for e in epochs], [e.train_accuracy for e in epochs], [e.eval_accuracy for e in epochs],
        epochs[0].eval_split if epochs else "test", paths[1],
    )  # fmt: skip
    return paths


if __name__ == "__main__":
    run_cli(main)
