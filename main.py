"""Train LeNet-5 on MNIST, save the weights, report test accuracy and plot the loss.

    python main.py --data-dir ../shared/mnist          # or MNIST_DIR=../shared/mnist python main.py

Ctrl-C saves a resumable checkpoint; `python main.py --resume PATH` continues it.

Measured on a 2-core Intel Xeon (torch 2.14.1), 3 seeds each (`python scripts/seeds.py
--data-dir ../shared/mnist [--recipe NAME]`, outputs in docs/): the default recipe ends at 99.24 %
test accuracy in 44 s, `--recipe fast` at 99.15 % in 21 s, `--recipe best` at 99.49 % in 5.5 min.
"""

import os
import signal

if __name__ == "__main__":  # a Ctrl-C while torch is still loading: exit 130, no traceback (run_cli takes over)
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))

import argparse
import contextlib
import shlex
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from data import Loaders, add_data_args, data_source, fingerprint, make_loaders
from distributed import World, agree, exit_skipping_teardown, join, launched_by_torchrun, leave, peer_failed
from eval import REPORT_FILES, Evaluation, evaluate, format_report, write_report
from helper import (
    DEFAULT_CHECKPOINT,
    DEFAULT_REPORT_DIR,
    CheckpointError,
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
from recipes import RECIPES, SCHEDULES, Recipe, augmentation_for, recipe_from_saved, resolve_recipe
from tensorboard_log import TensorBoardLog
from train import History, TrainingInterrupted, TrainState, fit
from visualize import plot_accuracy, plot_loss


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CliParser(__doc__)
    add_data_args(p)
    add_recipe_args(p)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="CUDA, MPS, else CPU")
    out = f"checkpoint to write, .json beside it (default: {DEFAULT_CHECKPOINT}; with --resume, the interrupted run's)"
    p.add_argument("--out", type=Path, help=out)
    p.add_argument("--report-dir", type=Path, default=DEFAULT_REPORT_DIR, help="folder for metrics.json and figures")
    p.add_argument("--resume", type=Path, help="continue a checkpoint saved by Ctrl-C, with its own recipe and data")
    p.add_argument("--log-interval", type=number(int, 1), default=200, help="print the running loss every N steps")
    tensorboard = "also log curves, weights and images for TensorBoard into a new run folder under DIR (default: off)"
    p.add_argument("--tensorboard", type=Path, metavar="DIR", help=tensorboard)
    args = p.parse_args(argv)
    args.out = args.out or default_out(args.resume)
    return args


def default_out(resume: Path | None) -> Path:
    """A resumed run finishes where the interrupted one would have: lenet5.resume.pt -> lenet5.pt."""
    if resume is None:
        return DEFAULT_CHECKPOINT
    return (
        resume.with_name(resume.name.removesuffix(".resume.pt") + ".pt")
        if resume.name.endswith(".resume.pt")
        else resume
    )


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
    flag("--batch-size", "training images per SGD step", type=number(int, 1))
    flag("--lr", "SGD learning rate, the schedule's peak", type=number(float, 0, low_open=True))
    flag("--momentum", "SGD momentum", type=number(float, 0, 0.999))
    flag("--nesterov", "Nesterov momentum", action=argparse.BooleanOptionalAction)
    flag("--weight-decay", "L2 penalty", type=number(float, 0))
    flag("--schedule", "per-step learning-rate schedule", choices=SCHEDULES)
    flag("--warmup-epochs", "linear learning-rate ramp from 0 at the start", type=number(float, 0, 100))
    flag("--augment", "random rotation, scale and shift of training images", action=argparse.BooleanOptionalAction)
    flag("--elastic-alpha", "with --augment: elastic distortion strength, pixels (0: off)", type=number(float, 0, 100))
    flag("--elastic-sigma", "smoothness of the elastic field, pixels", type=number(float, 0.5, 8))
    flag("--label-smoothing", "cross-entropy label smoothing", type=number(float, 0, 0.5))
    flag("--seed", "seed for weights, shuffling and augmentation", type=number(int, 0, 2**63 - 1))
    flag("--val-size", "training images held out for validation (0: test accuracy per epoch)", type=number(int, 0))
    flag("--limit", "use only the first N training and test images (default: all)", type=number(int, 1))
    flag("--full-c3", "connect every C3 map to all six S2 maps instead of LeCun's table", action="store_true")


def choose_recipe(args: argparse.Namespace, resumed: dict[str, Any] | None) -> tuple[Recipe, dict[str, Any]]:
    """(recipe, model config): from the flags, or from the checkpoint being resumed, refusing flags that differ."""
    given = {f.name: getattr(args, f.name) for f in fields(Recipe) if hasattr(args, f.name)}
    if hasattr(args, "recipe"):
        given["name"] = args.recipe
    full_c3 = getattr(args, "full_c3", None)
    if resumed is None:
        recipe = resolve_recipe(given.pop("name", "default"), given)
        if not recipe.augment:
            if given.get("elastic_alpha", 0) > 0 or "elastic_sigma" in given:
                raise UserError("--elastic-alpha and --elastic-sigma distort the augmented images: drop --no-augment")
            recipe = replace(recipe, elastic_alpha=0.0)  # (--recipe best --no-augment): no distortion of any kind
        if given.get("nesterov") and recipe.momentum == 0:
            raise UserError("--nesterov needs momentum: give --momentum above 0, or --no-nesterov")
        return recipe, {"c3_table": not full_c3}
    recipe, config = recorded_recipe(resumed, args.resume)
    saved = asdict(recipe)
    differ = [f"{_flag(k, v)} (it has {_flag(k, saved[k])})" for k, v in given.items() if saved[k] != v]
    if full_c3 and config.get("c3_table", True):
        differ.append("--full-c3 (the checkpoint uses LeCun's C3 table)")
    if differ:
        raise UserError(
            f"--resume continues the checkpoint's own recipe, and these flags differ from it: {'; '.join(differ)}. "
            "Drop them, or train anew without --resume"
        )
    return recipe, config


def recorded_recipe(resumed: dict[str, Any], path: Path) -> tuple[Recipe, dict[str, Any]]:
    """(recipe, model config) that a checkpoint recorded; a file from another version may carry
    fields this code does not know, or lack some it needs."""
    try:
        recipe, config = recipe_from_saved(resumed["train_state"]["recipe"]), resumed["config"]
        LeNet5(**config)
        epoch = resumed["train_state"]["epoch"]
        if type(epoch) is not int or not 0 <= epoch <= recipe.epochs:
            raise ValueError(f"its epoch {epoch!r} is not one of its recipe's")
    except (TypeError, KeyError, AttributeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: its recipe or model config does not fit this version ({err}); retrain"
        ) from None
    return recipe, config


def _flag(name: str, value: Any) -> str:
    flag = "--" + ("recipe" if name == "name" else name.replace("_", "-"))
    return (flag if value else f"--no-{flag[2:]}") if isinstance(value, bool) else f"{flag} {value}"


def print_architecture(model: LeNet5) -> None:
    print(f"LeNet-5 ({'LeCun C3 table' if model.config['c3_table'] else 'full C3'}):")
    for name, description, params in layer_table(model):
        print(f"  {name:<7} {description:<34} {params:>7,}")
    print(f"  {'total':<42} {count_parameters(model):>7,} trainable parameters")


@dataclass(frozen=True)
class Setup:
    """What a run starts from, once every process has it."""

    recipe: Recipe
    config: dict[str, Any]  # LeNet5's constructor arguments
    loaders: Loaders
    data: dict[str, Any]  # the data's fingerprint and sizes, kept in the checkpoint
    resumed: dict[str, Any] | None  # the checkpoint given to --resume


def prepare(args: argparse.Namespace, world: World, device: torch.device) -> Setup:
    """Everything that can fail on one machine (paths, checkpoint, data): all processes check in together,
    so that one failure ends the whole job with one line."""
    error = setup = None
    try:
        if world.is_main:
            check_outputs(args.out, args.report_dir)
            if args.tensorboard:
                check_output_dir(args.tensorboard, "--tensorboard")
        resumed = load_checkpoint(args.resume, resumable=True) if args.resume else None
        recipe, config = choose_recipe(args, resumed)
        mnist = data_source(args).open()
        data = {"fingerprint": fingerprint(mnist), "train": len(mnist.train_labels), "test": len(mnist.test_labels)}
        if resumed:
            check_resumable_here(resumed, args.resume, data["fingerprint"], world)
        loaders = make_loaders(
            mnist, recipe.batch_size, recipe.seed, augmentation_for(recipe), recipe.val_size, recipe.limit,
            device=device, rank=world.rank, world_size=world.size,
        )  # fmt: skip
        setup = Setup(recipe, config, loaders, data, resumed)
    except UserError as err:
        error = err
    agree(error, world)
    return setup


def check_resumable_here(checkpoint: dict[str, Any], path: Path, data_fingerprint: str, world: World) -> None:
    saved = checkpoint.get("data", {}).get("fingerprint")
    if saved != data_fingerprint:
        raise UserError(
            f"--resume {path} was trained on other data (fingerprint {saved}; these files give {data_fingerprint}); "
            "pass the --data-dir it was trained on"
        )
    processes = checkpoint["train_state"].get("world_size", 1)
    if processes != world.size:
        raise UserError(
            f"--resume {path} was trained by {processes} process(es); resume it with as many "
            f"({'python main.py' if processes == 1 else f'torchrun --nproc-per-node {processes} main.py'})"
        )


def build_state(setup: Setup, world: World, device: torch.device, resume: Path | None) -> TrainState:
    torch.manual_seed(setup.recipe.seed)  # the initial weights (the same in every process)
    model = place_model(LeNet5(**setup.config), device)
    print_architecture(model)
    state = TrainState(model, setup.recipe, len(setup.loaders.train), setup.loaders.generators, world)
    if setup.resumed:
        try:
            state.load_state_dict(training_state(setup.resumed))
        except (KeyError, TypeError, IndexError) as err:
            raise CheckpointError(f"{resume}: its training state does not fit this version ({err!r})") from None
        note = "nothing left to train; evaluating it" if state.epoch >= state.recipe.epochs else "continuing"
        print(f"resuming {resume}: {state.epoch} of {state.recipe.epochs} epochs done, {note}")
    return state


def main(argv: list[str] | None = None) -> None:
    started = time.time()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parse_args(argv)
    world, device = join(resolve_device(args.device))
    try:
        with contextlib.redirect_stdout(sys.stdout if world.is_main else open(os.devnull, "w")):  # one voice
            train_and_report(args, continue_command(argv, world), world, device, started)
    except RuntimeError as err:
        if not peer_failed(err, world):
            raise
        sys.exit(1)  # another process failed and said why; a second traceback would only bury that line
    finally:
        leave(world)


def continue_command(argv: list[str], world: World) -> str:
    """This run's command without its --resume: `{} --resume PATH` continues it, with the same flags."""
    kept = [a for i, a in enumerate(argv) if a != "--resume" and (i == 0 or argv[i - 1] != "--resume")]
    kept = [a for a in kept if not a.startswith("--resume=")]
    launcher = (
        ["torchrun", "--nproc-per-node", str(world.size), "main.py"] if world.distributed else ["python", "main.py"]
    )
    return shlex.join([*launcher, *kept])


def train_and_report(
    args: argparse.Namespace, command: str, world: World, device: torch.device, started: float
) -> None:
    setup = prepare(args, world, device)
    print(
        f"device: {device}{f' x {world.size} processes' if world.distributed else ''}; recipe: {asdict(setup.recipe)}"
    )
    sizes = len(setup.loaders.train.dataset), setup.recipe.val_size, len(setup.loaders.test.dataset)
    print("data: {:,} training, {:,} validation, {:,} test images".format(*sizes))
    state = build_state(setup, world, device, args.resume)
    tensorboard = TensorBoardLog.start(args.tensorboard if world.is_main else None, setup.recipe)
    if tensorboard.enabled:
        print(f"TensorBoard: logging into {tensorboard.run_dir}; view with `tensorboard --logdir {args.tensorboard}`")
    try:
        fit(state, setup.loaders, device, args.log_interval, on_epoch=tensorboard.after_epoch)
    except TrainingInterrupted as stop:
        exit_saving(stop.state, setup, args.out, f"after epoch {stop.state['epoch']}", command, world)
    final = state.state_dict()  # every process takes part; from here on, rank 0 alone works
    if not world.is_main:
        return
    try:
        result = evaluate(state.model, setup.loaders.test, device)
    except KeyboardInterrupt:  # training is finished: keep it
        exit_saving(final, setup, args.out, "with training finished", command, world)
    with interrupts_deferred():
        paths = save_trained(args.out, final, setup, result, device, started)
        if args.resume and args.resume.name.endswith(".resume.pt") and args.resume.resolve() != args.out.resolve():
            args.resume.unlink(missing_ok=True)  # the run it held is complete now
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


def resume_path(out: Path) -> Path:
    return out.with_name(out.stem + ".resume.pt")


def exit_saving(training: dict[str, Any], setup: Setup, out: Path, when: str, command: str, world: World) -> None:
    """Ctrl-C: save the resumable state (rank 0), say how to continue, exit 130 (every process)."""
    if world.is_main:
        path = resume_path(out)
        with interrupts_deferred():  # a second Ctrl-C (or torchrun's SIGTERM) waits for this
            save_checkpoint(path, setup.config, training, data=setup.data)
            print(f"\ninterrupted: saved the state {when} to {path}")
            print(f"continue with: {command} --resume {shlex.quote(str(path))}", flush=True)
    sys.exit(130)


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
    json_path.unlink(missing_ok=True)  # a crash between the two writes leaves no stale .json beside a new .pt
    save_checkpoint(out, setup.config, training, metrics, setup.data)
    write_json(metrics, json_path)
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
    if launched_by_torchrun():
        exit_skipping_teardown(lambda: run_cli(main))
    run_cli(main)
