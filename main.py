"""Train LeNet-5 on MNIST, save the weights, report test accuracy and plot the loss.

    python main.py --data-dir ../shared/mnist          # or MNIST_DIR=../shared/mnist python main.py

Read main() top to bottom: parse the flags, prepare (recipe, data, model), fit, report.

Where a run writes: a named recipe as it stands (`python main.py`, `--recipe best`) writes
checkpoints/lenet5.pt (lenet5-NAME.pt for the other recipes) and its report into reports/. A run
with any recipe flag changed, or on --limit images, is an experiment: it writes everything into a
folder of its own, runs/<time>_<recipe>-seed<N>/, and never replaces the checkpoints that eval.py,
predict.py and the demo use. --out and --report-dir say otherwise.
A stop signal (Ctrl-C, SIGTERM, SIGHUP, SIGQUIT) saves a resumable checkpoint; `--resume PATH` continues it,
its report in a reports/ folder beside the finished checkpoint unless --report-dir says otherwise.
"""

import argparse
import contextlib
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from support.cli import (
    EXIT_INTERRUPTED,
    PROJECT_DIR,
    CliParser,
    UserError,
    add_device_flag,
    number,
    one_line,
    output_file,
    run_cli,
    through_link,
)

import torch

from data import DataSource, Loaders, add_data_args, data_source, fingerprint, make_loaders
from eval import REPORT_FOLDER, Evaluation, evaluate, format_report, write_report
from extras.resume import InterruptedRun, Resume, continue_command, finished_path, resume_path
from extras.tensorboard_log import TensorBoardLog
from helper import CHECKPOINT, METRICS, save_checkpoint
from LeNet5 import LeNet5, count_parameters, layer_table
from support import signals
from support.devices import choose_device
from support.distributed import World, agree, code_version, exit_skipping_teardown, join, one_job
from support.figures import plot_accuracy, plot_loss
from support.files import (
    OutputPlan,
    missing_folders,
    new_folder,
    refuse_special_file,
    remove_if_empty,
    resolve_output,
)
from support.optional import attempt
from support.recipes import Recipe, add_recipe_args, recipe_flags, resolve_recipe, run_name
from train import History, TrainingInterrupted, TrainState, fit

CHECKPOINT_DIR = PROJECT_DIR / "checkpoints"
REPORT_DIR = PROJECT_DIR / "reports"
EXPERIMENT_DIR = PROJECT_DIR / "runs"


@dataclass(frozen=True)
class Outputs:
    """Where this run writes."""

    checkpoint: Path  # with its metrics .json beside it, and its .resume.pt when stopped
    report_dir: Path
    tensorboard: Path | None  # a folder for TensorBoard's run folders, or None
    folder: Path | None = None  # an experiment's own folder (runs/<time>_...), made when the run starts
    checkpoint_flag: str = "--out"  # how the checkpoint's path was chosen, for the messages about it


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = CliParser(__doc__)
    add_data_args(p)
    add_recipe_args(p)
    add_device_flag(p)
    out = "checkpoint to write (x.pt), x.json beside it (default: see above; with --resume x.resume.pt, x.pt beside it)"
    p.add_argument("--out", type=output_file, help=out)
    p.add_argument("--report-dir", type=Path, help="folder for metrics.json and the figures (default: see above)")
    resume = "continue a checkpoint saved by a stop signal, with its own recipe"
    p.add_argument("--resume", type=through_link, help=resume)
    compiled = "train through torch.compile (a first run compiles for seconds to a minute; later runs reuse its cache)"
    p.add_argument("--compile", action="store_true", help=compiled)
    p.add_argument("--log-interval", type=number(int, 1), default=200, help="print the running loss every N steps")
    tensorboard = "also log curves, weights and images for TensorBoard into a new run folder under DIR"
    p.add_argument("--tensorboard", type=Path, metavar="DIR", help=tensorboard)
    return p.parse_args(argv)


def outputs(flags: dict[str, Any], out: Path | None, report_dir: Path | None, resume: Path | None,
            tensorboard: Path | None) -> Outputs:  # fmt: skip
    """The named recipes' runs write into checkpoints/ and reports/; an experiment, into a runs/ folder of its own."""
    name = flags.get("name", "default")
    experiment = bool(set(flags) - {"name"})
    folder = EXPERIMENT_DIR / run_name(name, flags.get("seed", Recipe.seed))
    flag = "--out"
    if out is None:
        named = CHECKPOINT_DIR / ("lenet5.pt" if name == "default" else f"lenet5-{name}.pt")
        out = finished_path(resume) if resume else folder / "lenet5.pt" if experiment else named
        flag = "--resume's finished checkpoint" if resume else flag
    if report_dir is None and resume:  # the finished checkpoint's own reports/: the named runs' only for theirs
        report_dir = REPORT_DIR if out.parent.resolve() == CHECKPOINT_DIR.resolve() else out.parent / "reports"
    elif report_dir is None:
        report_dir = folder / "reports" if experiment else REPORT_DIR
    used = folder in (out.parent, report_dir.parent) and not resume
    return Outputs(out, report_dir, tensorboard, folder if used else None, flag)


@contextlib.contextmanager
def own_folder(paths: Outputs, is_main: bool) -> Iterator[Outputs]:
    """An experiment's folder, made now and for this run alone (two runs started in the same second get two:
    the second one's name ends in -2); removed at the end when nothing was written into it (a refused run,
    or one stopped before it saved anything). Yields the paths in the folder actually made."""
    if paths.folder is None or not is_main:  # (under torchrun, rank 0 alone writes)
        yield paths
        return
    parents = missing_folders(paths.folder.parent)  # runs/ itself, the first time
    made = new_folder(paths.folder, "the run's folder (--out and --report-dir choose others)")

    def moved(path: Path) -> Path:
        return made / path.relative_to(paths.folder) if path.is_relative_to(paths.folder) else path

    try:
        yield replace(paths, checkpoint=moved(paths.checkpoint), report_dir=moved(paths.report_dir), folder=made)
    finally:
        remove_if_empty(made, *parents)


def plan_outputs(paths: Outputs, resume: Path | None, inputs: dict[str, Path | None] | None = None) -> OutputPlan:
    """Every output checked before any work starts: writable, none another output or an input (`inputs`: the
    data files, by what each is; --resume is added here), none a file of the user's that only has its name; and
    the checkpoint held for this run alone. The plan's `with` block lets it go."""
    if resume:  # (its default --out is beside it: a pipe given as --resume is named as that)
        refuse_special_file(resolve_output(resume, "--resume"), "--resume", "pass the file an interrupted run saved")
    out = paths.checkpoint_flag
    rewritten = {resolve_output(path, out) for path in (paths.checkpoint, resume_path(paths.checkpoint))}
    replaced = resume and resolve_output(resume, "--resume") in rewritten  # a run may replace what it resumes
    if replaced and resume.is_file() and not CHECKPOINT.ours(resume):  # (said as what it is given as, not as --out)
        raise UserError(f"--resume {resume} is not a checkpoint this program saved; pass the .resume.pt file an "
                        "interrupted run saved")  # fmt: skip
    plan = OutputPlan({**(inputs or {}), "the file given as --resume": None if replaced else resume})
    plan.file(paths.checkpoint, out, kind=CHECKPOINT)
    if paths.checkpoint.suffix != ".pt":  # (`m` or "m.pt " would share m.pt's m.json, and replace it; ".pt" has none)
        raise UserError(f"{out} {paths.checkpoint}: give a name ending in .pt, such as lenet5.pt (its metrics go "
                        "beside it as .json)")  # fmt: skip
    if paths.checkpoint.name.endswith(".resume.pt"):  # the name of an interrupted run's only copy
        raise UserError(f"{out} {paths.checkpoint}: a name ending in .resume.pt is an interrupted run's resume file; "
                        "choose another name")  # fmt: skip
    plan.file(paths.checkpoint.with_suffix(".json"), f"{out}'s metrics file", kind=METRICS)
    pending = plan.file(resume_path(paths.checkpoint), f"{out}'s resume file", kind=CHECKPOINT)
    if pending.is_file() and not (resume and resolve_output(resume, "--resume") == resolve_output(pending, out)):
        raise UserError(f"{pending} holds an interrupted run that a stop of this one would replace; continue it with "
                        f"--resume {shlex.quote(str(pending))}, or move it to train anew")  # fmt: skip
    plan.folder(paths.report_dir, "--report-dir", REPORT_FOLDER)
    if paths.tensorboard:  # (its run folders are new ones inside it: the folder itself must be free)
        plan.folder(paths.tensorboard, "--tensorboard")
    plan.lock(paths.checkpoint, "--out")  # last: nothing after it can fail
    return plan


def print_architecture(model: LeNet5) -> None:
    kind = ("the 1998 paper's network, " if model.lecun1998 else "") + (
        "LeCun C3 table" if model.config["c3_table"] else "full C3"
    )
    print(f"LeNet-5 ({kind}):")
    rows = layer_table(model)
    width = max(len(description) for _, description, _ in rows)
    for name, description, params in rows:
        print(f"  {name:<7} {description:<{width}} {params:>7,}")
    print(f"  {'total':<{width + 8}} {count_parameters(model):>7,} trainable parameters")


@dataclass(frozen=True)
class Setup:
    """What a run starts from, once every process has it."""

    recipe: Recipe
    config: dict[str, Any]  # LeNet5's constructor arguments
    loaders: Loaders
    data: dict[str, Any]  # the data's fingerprint and sizes, kept in the checkpoint
    resume: Resume | None  # the checked --resume file
    interrupted: InterruptedRun  # how this run saves itself when it is stopped
    eval_flags: list[str]  # eval.py's flags for the same test images (the data, its cache, --limit)


def prepare(flags: dict[str, Any], resume: Path | None, source: DataSource, paths: Outputs, argv: list[str],
            world: World, device: torch.device, held: contextlib.ExitStack | None = None) -> Setup:  # fmt: skip
    """Everything that can fail on one machine (paths, data, the resume file): all processes check in
    together, so that one failure ends the whole job with one line. held: keeps the outputs' plan (its lock)
    until the run ends (None: the outputs are only checked)."""
    error = setup = None
    try:
        if world.is_main:
            with contextlib.ExitStack() as checking:
                checking.enter_context(plan_outputs(paths, resume, source.inputs()))
                if held is not None:
                    held.enter_context(checking.pop_all())
        checked = Resume.open(resume, flags, world) if resume else None
        if checked:
            recipe, config = checked.recipe, checked.config
        else:
            overrides = {k: v for k, v in flags.items() if k not in ("name", "full_c3")}
            recipe = resolve_recipe(flags.get("name", "default"), overrides)
            config = {"c3_table": not flags.get("full_c3", False)} | (
                {"lecun1998": True} if recipe.network == "lecun1998" else {}
            )
        mnist = source.open()
        data = {"fingerprint": fingerprint(mnist), "train": len(mnist.train_labels), "test": len(mnist.test_labels)}
        if checked:
            checked.check_data(data["fingerprint"])
        interrupted = InterruptedRun(paths.checkpoint, config, data, continue_command(argv, world), world)
        same_test = source.flags() + (["--limit", str(recipe.limit)] if recipe.limit else [])
        setup = Setup(recipe, config, make_loaders(mnist, recipe, device, world), data, checked, interrupted, same_test)
    except UserError as err:
        error = err
    facts = setup and {"recipe": asdict(setup.recipe), "model": setup.config, "data": setup.data["fingerprint"]}
    agree(error, world, facts and {**facts, "code": code_version()})  # under torchrun: every process alike
    return setup


def main(argv: list[str] | None = None) -> None:
    started = time.time()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parse_args(argv)
    flags = recipe_flags(args)
    paths = outputs(flags, args.out, args.report_dir, args.resume, args.tensorboard)
    world, device = join(choose_device(args.device))  # one process; or one of torchrun's, with its device
    with one_job(world), own_folder(paths, world.is_main) as paths, contextlib.ExitStack() as held:
        setup = prepare(flags, args.resume, data_source(args), paths, argv, world, device, held)
        recipe, loaders = setup.recipe, setup.loaders
        processes = f" x {world.size} processes" if world.distributed else ""
        print(f"device: {device}{processes}; recipe: {asdict(recipe)}")
        sizes = len(loaders.train.dataset), recipe.val_size, len(loaders.test.dataset)
        print("data: {:,} training, {:,} validation, {:,} test images".format(*sizes))
        state = TrainState(setup.config, recipe, loaders, device, world, compiled=args.compile)
        print_architecture(state.model)
        if setup.resume:
            setup.resume.restore(state)
        tensorboard = TensorBoardLog.start(paths.tensorboard if world.is_main else None, recipe)
        try:
            fit(state, loaders, args.log_interval, on_epoch=tensorboard.after_epoch)
        except TrainingInterrupted as stop:
            setup.interrupted.save_and_exit(stop.state, f"after epoch {stop.state['epoch']}", stop.failure)
        final = state.state_dict()  # every process takes part; from here on, rank 0 alone works
        if world.is_main:
            report(state, final, setup, paths, tensorboard, started)


def report(state: TrainState, final: dict[str, Any], setup: Setup, paths: Outputs, tensorboard: TensorBoardLog,
           started: float) -> None:  # fmt: skip
    """Evaluate the trained model on the test set, save it with its metrics, write the report and figures."""
    try:
        result = evaluate(state.eval_model, setup.loaders.test, state.device)
    except KeyboardInterrupt:  # training is finished: keep it
        setup.interrupted.save_and_exit(final, "with training finished")
    except Exception as err:  # a broken install, memory: the evaluation is re-run by --resume, the training is kept
        failed = one_line(f"the test evaluation failed ({type(err).__name__}: {err})")
        setup.interrupted.save_and_exit(final, "with training finished", failed)
    try:
        with signals.deferred():
            written = save_trained(paths.checkpoint, final, setup, result, state.device, started)
            if setup.resume:
                setup.resume.finished(paths.checkpoint)
    except UserError as err:  # a disk filled, or a file put in the folder's place, during the run: the training is kept
        setup.interrupted.save_and_exit(final, "with training finished", f"the checkpoint could not be saved ({err})")
    print(f"\n{format_report(result)}")
    # The checkpoint holds the run; what follows is optional (support/optional.py): a failure is one warning.
    # The report and the figures replace an earlier run's together, or not at all: never a mixed set.
    folder, images, weights = paths.report_dir, setup.loaders.test.dataset.images, str(paths.checkpoint)
    figures = history_figures(state.history)
    try:
        written += (
            attempt(
                f"the report and figures in {folder}",
                lambda: write_report(result, images, folder, {"weights": weights}, figures),
            )
            or []
        )
        written += tensorboard.finish(setup.recipe, setup.config, result, images)
    except KeyboardInterrupt:  # the checkpoint is safe; say so, and how to write the report it stopped
        again = shlex.join(["python", "eval.py", "--weights", weights, "--report-dir", str(folder), *setup.eval_flags])
        print(
            "\n"
            + one_line(f"interrupted: {weights} is saved; its report may be unwritten or an earlier run's: {again}")
        )
        sys.exit(EXIT_INTERRUPTED)
    print(f"total time {time.time() - started:.1f}s; wrote:", *[f"  {one_line(str(p))}" for p in written], sep="\n")


def save_trained(out: Path, training: dict[str, Any], setup: Setup, result: Evaluation, device: torch.device,
                 started: float) -> list[Path]:  # fmt: skip
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


def history_figures(history: History) -> dict[str, Callable[[Path], None]]:
    """The loss and accuracy figures, by file name, each drawn by a function of the path to write."""
    epochs = history.epochs
    split = epochs[0].eval_split if epochs else "test"
    accuracy = [e.epoch for e in epochs], [e.train_accuracy for e in epochs], [e.eval_accuracy for e in epochs]
    return {
        "loss.png": lambda path: plot_loss(history.step_losses, history.steps_per_epoch, path),
        "accuracy.png": lambda path: plot_accuracy(*accuracy, split, path),
    }


if __name__ == "__main__":
    exit_skipping_teardown(lambda: run_cli(main))
