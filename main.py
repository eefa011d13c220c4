"""Train LeNet-5 on MNIST, save the weights, report test accuracy and plot the loss.

    python main.py --data-dir ../shared/mnist          # or MNIST_DIR=../shared/mnist python main.py

Ctrl-C saves a resumable checkpoint; `python main.py --resume PATH` continues it.
"""

import argparse
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from data import MNIST_MEAN, MNIST_STD, add_data_args, make_loaders, open_mnist
from eval import evaluate, format_report, write_report
from helper import (
    DEFAULT_CHECKPOINT,
    DEFAULT_REPORT_DIR,
    CliParser,
    UserError,
    ensure_writable_dir,
    load_checkpoint,
    plot_accuracy,
    plot_loss,
    resolve_device,
    run_cli,
    save_model,
    write_json,
)
from LeNet5 import LeNet5, count_parameters, layer_table
from train import (
    Recipe,
    TrainingInterrupted,
    capture_state,
    fit,
    make_optimizer,
    make_scheduler,
    new_history,
    restore_state,
)

NORMALIZATION = {"mean": MNIST_MEAN, "std": MNIST_STD, "pad": 2}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = Recipe()
    p = CliParser(__doc__)
    add_data_args(p)
    g = p.add_argument_group("training recipe")
    g.add_argument("--epochs", type=int, default=d.epochs, help="passes over the training set")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="training images per SGD step")
    g.add_argument("--lr", type=float, default=d.lr, help="SGD learning rate (the schedule's peak)")
    g.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=d.nesterov, help="Nesterov momentum")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="L2 penalty")
    g.add_argument(
        "--schedule",
        choices=["linear", "cosine", "constant"],
        default=d.schedule,
        help="per-step learning-rate schedule",
    )
    g.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=d.augment,
        help="random rotation/scale/shift of training images",
    )
    g.add_argument("--seed", type=int, default=d.seed, help="seed for weights, shuffling and augmentation")
    g.add_argument(
        "--val-size",
        type=int,
        default=d.val_size,
        help="training images held out for validation (0: report test accuracy per epoch)",
    )
    g.add_argument(
        "--limit", type=int, default=d.limit, help="use only the first N training and test images (quick runs)"
    )
    g.add_argument(
        "--full-c3", action="store_true", help="connect every C3 map to all six S2 maps instead of LeCun's table"
    )
    p.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="auto: CUDA, then MPS, then CPU"
    )
    p.add_argument(
        "--out", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint to write (metrics go beside it as .json)"
    )
    p.add_argument(
        "--report-dir", type=Path, default=DEFAULT_REPORT_DIR, help="folder for metrics.json and the figures"
    )
    p.add_argument("--resume", type=Path, help="continue a checkpoint saved by Ctrl-C (its recipe is used)")
    p.add_argument("--log-interval", type=int, default=200, help="print the running loss every N steps")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "log_interval"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be at least 1")
    if args.lr <= 0 or not 0 <= args.momentum < 1:
        p.error("--lr must be positive and --momentum in [0, 1)")
    return args


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    return Recipe(**{f.name: getattr(args, f.name) for f in fields(Recipe)})


def print_architecture(model: LeNet5) -> None:
    print(f"LeNet-5 ({'LeCun C3 table' if model.config['c3_table'] else 'full C3'}):")
    for name, description, params in layer_table(model):
        print(f"  {name:<7} {description:<34} {params:>7,}")
    print(f"  {'total':<42} {count_parameters(model):>7,} trainable parameters")


def main(argv: list[str] | None = None) -> None:
    started = time.time()
    args = parse_args(argv)
    device = resolve_device(args.device)
    ensure_writable_dir(args.out.parent)
    ensure_writable_dir(args.report_dir)
    resumed = load_resumable(args.resume) if args.resume else None
    recipe = Recipe(**resumed["train_state"]["recipe"]) if resumed else recipe_from_args(args)
    config = resumed["config"] if resumed else {"c3_table": not args.full_c3}
    print(f"device: {device}; recipe: {asdict(recipe)}")

    data = open_mnist(args.data_dir, args.cache_dir, args.allow_custom_data, not args.no_download)
    loaders = make_loaders(
        data, recipe.batch_size, recipe.seed, recipe.augment, recipe.val_size, recipe.limit, device=device
    )
    sizes = len(loaders.train.dataset), recipe.val_size, len(loaders.test.dataset)
    print("data: {:,} training, {:,} validation, {:,} test images".format(*sizes))
    torch.manual_seed(recipe.seed)
    model = LeNet5(**config).to(device, memory_format=torch.channels_last)
    print_architecture(model)
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe, len(loaders.train))
    history = new_history(len(loaders.train))
    if resumed:
        model.load_state_dict(resumed["state_dict"])
        restore_state(resumed["train_state"], optimizer, scheduler, loaders.generator)
        history = resumed["train_state"]["history"]
        done = len(history["epochs"])
        note = "nothing left to train; evaluating it" if done >= recipe.epochs else "continuing"
        print(f"resuming {args.resume}: {done} of {recipe.epochs} epochs done, {note}")

    held_out, split = (loaders.val, "val") if loaders.val is not None else (loaders.test, "test")
    try:
        fit(
            model,
            optimizer,
            scheduler,
            loaders.train,
            held_out,
            loaders.generator,
            recipe,
            device,
            history,
            split,
            args.log_interval,
        )
    except TrainingInterrupted as stop:
        save_interrupted(stop.state, model, args.out)
        sys.exit(130)
    state = capture_state(model, optimizer, scheduler, loaders.generator, recipe, recipe.epochs, history)
    results = evaluate(model, loaders.test, device)
    paths = save_trained(args.out, model, state, results, device, started)
    print()
    print(format_report(results))
    paths += write_report(results, loaders.test.dataset.images, args.report_dir, {"weights": str(args.out)})
    paths += plot_history(history, args.report_dir)
    print(f"total time {time.time() - started:.1f}s; wrote:", *[f"  {p}" for p in paths], sep="\n")


def load_resumable(path: Path) -> dict[str, Any]:
    checkpoint = load_checkpoint(path)
    if "train_state" not in checkpoint:
        raise UserError(f"{path}: has no training state to resume from (was it written by main.py?)")
    return checkpoint


def save_interrupted(state: dict[str, Any], model: LeNet5, out: Path) -> None:
    path = out.with_name(out.stem + ".resume.pt")
    model.load_state_dict(state.pop("model"))
    save_model(path, model, state["epoch"], {}, NORMALIZATION, train_state=state)
    print(f"\ninterrupted: saved the state after epoch {state['epoch']} to {path}")
    print(f"continue with: python main.py --resume {path}")


def save_trained(
    out: Path, model: LeNet5, state: dict[str, Any], results: dict[str, Any], device: torch.device, started: float
) -> list[Path]:
    """The checkpoint (resumable: it carries the training state) and its metrics as JSON beside it."""
    history = state["history"]
    metrics = {
        "test_accuracy": results["accuracy"],
        "per_class_accuracy": results["per_class_accuracy"],
        "parameters": count_parameters(model),
        "recipe": state["recipe"],
        "device": str(device),
        "train_seconds": sum(e["seconds"] for e in history["epochs"]),
        "wall_seconds": time.time() - started,
        "epochs": history["epochs"],
    }
    del state["model"]  # the checkpoint's state_dict holds the weights
    save_model(out, model, state["epoch"], metrics, NORMALIZATION, train_state=state)
    write_json(metrics, out.with_suffix(".json"))
    return [out, out.with_suffix(".json")]


def plot_history(history: dict[str, Any], report_dir: Path) -> list[Path]:
    paths = [report_dir / "loss.png", report_dir / "accuracy.png"]
    plot_loss(history["step_losses"], history["steps_per_epoch"], paths[0])
    plot_accuracy(history["epochs"], paths[1])
    return paths


if __name__ == "__main__":
    run_cli(main)
