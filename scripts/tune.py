"""Choose a recipe's values with Optuna, scored on a validation hold-out, never on the test set.

Each trial draws values from a search space and trains `python main.py` with them in a fresh process,
holding out --val-size training images; it reports each epoch's accuracy on them to Optuna as the
epoch ends, and a trial that falls behind (below the median of earlier trials at the same epoch, or
below --prune-below) is stopped there. A trial's score is its last epoch's validation accuracy; every
trial trains with the same --seed, so trials differ by their values alone.

The study lives in a database (--storage; a SQLite file by default). Workers that run the same command,
on one machine or, with a database server, on several, share one study: together they finish --trials
trials (completed or pruned; a trial stopped by Ctrl-C or a crash is not counted, and runs again).
Workers on one machine take turns to start trials, so they start exactly that many; on several machines
two workers that ask at the same instant may start one more.
The summary's command is the best trial's recipe for `python main.py`, without the hold-out.

    python scripts/tune.py --space fast --trials 30 --data-dir ../shared/mnist --out docs/tune.json
    python scripts/tune.py --space my_space.json --storage postgresql://user@host/optuna   # on each machine

--space is a preset (fast, fast3, best) or a JSON file that maps flags of main.py's "training recipe" group
(lr, momentum, batch_size or batch-size, ...; see `python main.py --help`) to one of
    {"low": 0.005, "high": 0.05, "log": true}   a number in [low, high], whole when both are ("step" optional)
    {"choices": ["linear", "cosine"]}           one of these
    0.95                                        this value in every trial
The values it does not name are the default recipe's. A trial that draws "augment": false leaves out
the distortion values (rotation, zoom, shift, elastic), one that draws momentum 0 or an optimizer other
than SGD leaves out nesterov, and one that draws SGD leaves out beta2 (main.py refuses those pairs).
"""

import argparse
import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl  # POSIX: workers on one machine take turns through a lock file
except ImportError:  # Windows: they go without, as workers on several machines do
    fcntl = None

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from cli import (  # noqa: E402
    CliParser,
    UserError,
    add_device_flag,
    add_json_flag,
    check_output_dir,
    check_output_file,
    interrupts_deferred,
    number,
    run_cli,
)

import optuna  # noqa: E402
import sqlalchemy.exc  # noqa: E402
from optuna.trial import Trial, TrialState  # noqa: E402

from data import add_data_args, add_limit_flag  # noqa: E402
from helper import write_json  # noqa: E402
from main import add_recipe_args  # noqa: E402
from recipes import DISTORTIONS  # noqa: E402

MAIN = PROJECT_DIR / "main.py"
DEFAULT_STORAGE = f"sqlite:///{PROJECT_DIR / 'runs' / 'tune' / 'optuna.db'}"
SET_BY_TUNE = ("seed", "val_size", "limit")  # recipe flags that tune.py's own flags set, the same for every trial
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
# main.py's per-epoch line (train.summary_line): "epoch 2/4: train loss ..., val acc 98.12%, ..."
EPOCH_LINE = re.compile(r"epoch (\d+)/\d+: .*?\b(val|test) acc ([0-9.]+)%")

SPACES: dict[str, dict[str, Any]] = {
    "fast": {  # two epochs, Adam or Muon: the most accuracy for the least computation
        "epochs": 2,
        "optimizer": {"choices": ["adam", "muon"]},
        "batch_size": {"choices": [128, 256]},
        "lr": {"low": 0.005, "high": 0.05, "log": True},
        "momentum": {"low": 0.6, "high": 0.95},
        "beta2": {"choices": [0.9, 0.99]},
        "warmup_epochs": {"low": 0.0, "high": 0.3},
        "label_smoothing": {"low": 0.0, "high": 0.15},
        "augment": {"choices": [True, False]},
        "rotation": {"low": 0.0, "high": 10.0},
        "zoom": {"low": 0.0, "high": 0.1},
        "shift": {"low": 0.0, "high": 2.0},
    },
    "fast3": {  # round 2's search (then named "fast"): three epochs, SGD or Adam
        "epochs": 3,
        "optimizer": {"choices": ["sgd", "adam"]},
        "batch_size": {"choices": [64, 128, 256]},
        "lr": {"low": 0.003, "high": 0.05, "log": True},
        "momentum": {"low": 0.6, "high": 0.98},
        "beta2": {"choices": [0.9, 0.99, 0.999]},
        "schedule": {"choices": ["linear", "cosine"]},
        "warmup_epochs": {"low": 0.0, "high": 0.5},
        "label_smoothing": {"low": 0.0, "high": 0.15},
        "ema_decay": {"choices": [0.0, 0.99, 0.995, 0.998]},
        "augment": {"choices": [True, False]},
    },
    "best": {  # long runs on distorted digits: the most accuracy
        "epochs": {"low": 30, "high": 60, "step": 10},
        "lr": {"low": 0.005, "high": 0.03, "log": True},
        "momentum": {"low": 0.9, "high": 0.98},
        "elastic_alpha": {"low": 0.0, "high": 48.0},
        "elastic_sigma": {"low": 4.0, "high": 8.0},
        "label_smoothing": {"low": 0.0, "high": 0.1},
        "weight_decay": {"choices": [0.0, 1e-5, 1e-4, 5e-4]},
    },
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CliParser(__doc__)
    p.add_argument("--space", default="fast", help=f"a preset ({', '.join(SPACES)}) or a JSON file, as above")
    p.add_argument("--trials", type=number(int, 1), default=20, help="trials the study finishes, all workers together")
    p.add_argument("--study-name", help="the study in --storage (default: the space's name)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="any database URL Optuna accepts")
    p.add_argument("--pruner", choices=["median", "none"], default="median", help="stop trials below the median")
    p.add_argument(
        "--prune-below",
        type=number(float, 0, 1),
        help="also stop a trial whose val accuracy after an epoch is below this fraction",
    )
    p.add_argument("--val-size", type=number(int, 1), default=10_000, help="training images held out to score on")
    p.add_argument("--seed", type=number(int, 0), default=0, help="every trial's main.py --seed")
    add_limit_flag(p)
    add_device_flag(p)
    add_data_args(p)
    p.add_argument("--out-dir", type=Path, default=PROJECT_DIR / "runs" / "tune", help="trials' checkpoints and logs")
    p.add_argument("--out", type=Path, help="write the summary here (JSON)")
    add_json_flag(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial, our own
    space = load_space(args.space)
    name = args.study_name or Path(args.space).stem
    if not re.fullmatch(r"[\w.-]+", name):
        raise UserError(f"--study-name {name!r}: use letters, digits, '.', '-' and '_' (it names a folder)")
    check_output_dir(args.out_dir, "--out-dir")
    if args.out:
        check_output_file(args.out, "--out", example="tune.json")
    settings = {"space": space, "val_size": args.val_size, "seed": args.seed, "limit": args.limit}
    study = open_study(args.storage, name, make_pruner(args.pruner, args.prune_below), settings)
    progress = sys.stderr if args.json else sys.stdout
    lock = lock_file(args.storage)
    while (trial := next_trial(study, args.trials, lock)) is not None:
        finished = run_and_tell(study, trial, space, trial_flags(args), args.out_dir / name)
        print(trial_row(finished), file=progress, flush=True)
    result = summary(study, args)
    if args.out:
        write_json(result, args.out)
    print(json.dumps(result, indent=2) if args.json else format_summary(result))


# --- the search space ---------------------------------------------------------------------------


class _FlagChecker(argparse.ArgumentParser):
    """main.py's recipe flags, each value checked by main.py's own rules; a bad one is a UserError."""

    def __init__(self):
        super().__init__(add_help=False, allow_abbrev=False)
        add_recipe_args(self)
        group = next(g for g in self._action_groups if g.title and g.title.startswith("training recipe"))
        self.recipe_flags = {a.dest: a for a in group._group_actions if a.dest not in SET_BY_TUNE}

    def error(self, message: str):
        raise UserError(f"--space: {message}")

    def tokens(self, name: str, value: Any) -> list[str]:
        """The command-line words that give `name` this value: `--lr 0.01`, `--no-augment`."""
        action = self.recipe_flags[name]
        if action.nargs == 0:  # a switch: --augment / --no-augment, or --full-c3 / nothing
            if not isinstance(value, bool):
                raise UserError(f"--space: {name} is true or false, got {value!r}")
            return action.option_strings[:1] if value else action.option_strings[1:]
        return [action.option_strings[0], str(value)]


FLAGS = _FlagChecker()


def load_space(given: str) -> dict[str, Any]:
    """A preset, or a JSON file: each flag's entry checked before any trial starts."""
    if given in SPACES:
        space = SPACES[given]
    else:
        path = Path(given)
        if path.suffix != ".json" or not path.is_file():
            raise UserError(f"--space {given!r} is neither a preset ({', '.join(SPACES)}) nor a .json file")
        try:
            space = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise UserError(f"--space {given}: not readable as JSON ({err})") from None
    if not isinstance(space, dict) or not space:
        raise UserError(f"--space {given}: give an object that maps recipe flags to ranges, choices or values")
    space = {str(key).replace("-", "_"): entry for key, entry in space.items()}
    for name, entry in space.items():
        check_entry(name, entry)
    return space


def check_entry(name: str, entry: Any) -> None:
    if name not in FLAGS.recipe_flags:
        raise UserError(f"--space: {name!r} is not one of main.py's recipe flags ({', '.join(FLAGS.recipe_flags)})")
    if not isinstance(entry, dict):
        entry = {"choices": [entry]}
    keys = set(entry)
    if keys == {"choices"} and isinstance(entry["choices"], list) and entry["choices"]:
        values = entry["choices"]
    elif {"low", "high"} <= keys <= {"low", "high", "log", "step"}:
        values = check_range(name, entry)
    else:
        raise UserError(f"--space: {name}: give {{'low': L, 'high': H}}, {{'choices': [...]}} or one value")
    for value in values:
        FLAGS.parse_args(FLAGS.tokens(name, value))


def check_range(name: str, entry: dict[str, Any]) -> list[Any]:
    """The range's ends, once it is known to be one."""
    low, high, step = entry["low"], entry["high"], entry.get("step")
    numbers = [v for v in (low, high, step) if v is not None]
    if any(type(v) not in (int, float) for v in numbers) or not low <= high:
        raise UserError(f"--space: {name}: low and high are numbers, low <= high; got {entry}")
    if entry.get("log") and (low <= 0 or step is not None):
        raise UserError(f"--space: {name}: a log range needs low > 0 and no step")
    return [low, high]


def draw(trial: Trial, space: dict[str, Any]) -> dict[str, Any]:
    """This trial's values: the space's fixed ones, and Optuna's suggestions for the others."""
    values: dict[str, Any] = {}
    for name in sorted(space, key=lambda n: n not in ("augment", "momentum", "optimizer")):  # they decide the rest
        if name in DISTORTIONS and values.get("augment") is False:
            continue
        sgd = values.get("optimizer", "sgd") == "sgd"
        if name == "nesterov" and (values.get("momentum") == 0 or not sgd):
            continue
        if name == "beta2" and sgd:
            continue
        values[name] = suggest(trial, name, space[name])
    return values


def suggest(trial: Trial, name: str, entry: Any) -> Any:
    if not isinstance(entry, dict):
        return entry
    if "choices" in entry:
        return trial.suggest_categorical(name, entry["choices"])
    low, high, step, log = entry["low"], entry["high"], entry.get("step"), entry.get("log", False)
    if all(type(v) is int for v in (low, high, step or 1)):
        return trial.suggest_int(name, low, high, step=step or 1, log=log)
    return trial.suggest_float(name, low, high, step=step, log=log)


def recipe_tokens(values: dict[str, Any]) -> list[str]:
    return [token for name, value in values.items() for token in FLAGS.tokens(name, value)]


# --- the study ----------------------------------------------------------------------------------


def make_pruner(kind: str, floor: float | None) -> optuna.pruners.BasePruner:
    pruners: list[optuna.pruners.BasePruner] = []
    if kind == "median":  # from the second epoch on: the first says little about a long schedule
        pruners.append(optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2))
    if floor is not None:
        pruners.append(optuna.pruners.ThresholdPruner(lower=floor))
    return AnyOf(pruners)


class AnyOf(optuna.pruners.BasePruner):
    """Prune when any of the pruners would (none: never)."""

    def __init__(self, pruners: list[optuna.pruners.BasePruner]):
        self.pruners = pruners

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return any(p.prune(study, trial) for p in self.pruners)


def database_file(storage: str) -> Path | None:
    """The file of a SQLite URL; None for a server database (or a URL that is not one)."""
    try:
        url = sqlalchemy.engine.make_url(storage)
    except sqlalchemy.exc.ArgumentError:
        return None
    return (
        Path(url.database)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
        else None
    )


def lock_file(storage: str) -> Path | None:
    """Beside a SQLite file: the lock that workers on this machine take turns with."""
    database = database_file(storage)
    return database.with_name(database.name + ".lock") if database else None


@contextlib.contextmanager
def turn(lock: Path | None) -> Iterator[None]:
    """One worker at a time counts the trials and starts one, so that together they start exactly --trials.
    A server database has no such lock, nor has Windows: two workers that ask at the same instant may start one
    too many."""
    if lock is None or fcntl is None:
        yield
        return
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def open_study(storage: str, name: str, pruner: optuna.pruners.BasePruner, settings: dict[str, Any]) -> optuna.Study:
    """The study `name` in `storage`, created by the first worker; the others must share its settings."""
    lock, database = lock_file(storage), database_file(storage)
    if database:
        check_output_file(database, "--storage", example="optuna.db")
    try:
        with interrupts_deferred(), turn(lock):
            study = optuna.create_study(
                storage=storage, study_name=name, direction="maximize", pruner=pruner, load_if_exists=True
            )
            if "settings" not in study.user_attrs:
                study.set_user_attr("settings", settings)
    except (ValueError, ImportError, sqlalchemy.exc.SQLAlchemyError) as err:
        raise UserError(f"--storage {masked(storage)}: {first_line(err)}") from None
    saved = study.user_attrs["settings"]
    differ = [key for key in settings if saved.get(key) != settings[key]]
    if differ:
        raise UserError(
            f"study {name!r} in that storage was started with another {', '.join(differ)} ({saved}); "
            "give another --study-name"
        )
    return study


def masked(url: str) -> str:
    """The URL with its password hidden."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def next_trial(study: optuna.Study, n_trials: int, lock: Path | None) -> Trial | None:
    """A new trial, or None once the study holds n_trials that are finished or under way."""
    trial = None
    try:
        with interrupts_deferred(), turn(lock):
            if len(study.get_trials(deepcopy=False, states=COUNTED)) < n_trials:
                trial = study.ask()
    except KeyboardInterrupt:  # held until the trial existed: it must not stay RUNNING
        if trial is not None:
            with interrupts_deferred():
                study.tell(trial, state=TrialState.FAIL)
        raise
    return trial


# --- one trial ----------------------------------------------------------------------------------


def trial_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--val-size", str(args.val_size), "--seed", str(args.seed), "--device", args.device]
    flags += ["--limit", str(args.limit)] if args.limit else []
    flags += ["--data-dir", str(args.data_dir)] if args.data_dir else []
    flags += ["--cache-dir", str(args.cache_dir)]
    flags += ["--allow-custom-data"] * args.allow_custom_data + ["--no-download"] * args.no_download
    return flags


def run_and_tell(
    study: optuna.Study, trial: Trial, space: dict[str, Any], common: list[str], folder: Path
) -> optuna.trial.FrozenTrial:
    """Train one trial and store its outcome: completed, pruned (also when its loss diverged) or failed."""
    state, value = TrialState.FAIL, None
    try:
        value = train(trial, recipe_tokens(draw(trial, space)), common, folder / f"trial-{trial.number}")
        state = TrialState.COMPLETE
    except optuna.TrialPruned:
        state = TrialState.PRUNED
    finally:  # also on Ctrl-C and errors: a trial left RUNNING would count against --trials for ever
        with interrupts_deferred():
            finished = study.tell(trial, value, state=state)
    return finished


def train(trial: Trial, recipe: list[str], common: list[str], folder: Path) -> float:
    """Run `python main.py RECIPE COMMON`, reporting each epoch's validation accuracy; the last one."""
    out = folder / "lenet5.pt"
    trial.set_user_attr("flags", recipe)
    with Training([*recipe, *common, "--out", str(out), "--report-dir", str(folder / "reports")], folder) as run:
        reported = 0
        for epoch, accuracy in run.epochs():
            trial.report(accuracy, epoch)
            reported += 1
            if trial.should_prune():
                trial.set_user_attr("stopped", f"pruned after epoch {epoch}")
                raise optuna.TrialPruned()
    if run.returncode != 0:
        reason = run.reason()
        if diverged(reason):  # these values train badly: hopeless, not broken
            trial.set_user_attr("stopped", reason)
            raise optuna.TrialPruned()
        raise UserError(f"trial {trial.number}: `python main.py` failed (exit {run.returncode}): {reason}")
    epochs = json.loads(out.with_suffix(".json").read_text())["epochs"]
    if reported != len(epochs):  # the epoch lines have changed: pruning would be blind
        raise UserError(f"trial {trial.number}: read {reported} of main.py's {len(epochs)} epoch lines in {run.log}")
    return epochs[-1]["eval_accuracy"]


def diverged(reason: str) -> bool:
    """Whether main.py's error line is train.TrainingDiverged's."""
    return re.search(r"\bthe loss (became|exploded)", reason) is not None


class Training:
    """`python main.py FLAGS` in a child process, its output copied into FOLDER/train.log as it comes;
    leaving the block early stops it the way Ctrl-C does (it saves its state and exits)."""

    def __init__(self, flags: list[str], folder: Path):
        self.command = [sys.executable, str(MAIN), *flags]
        self.log = folder / "train.log"
        folder.mkdir(parents=True, exist_ok=True)
        self.returncode: int | None = None

    def __enter__(self) -> "Training":
        self.sink = open(self.log, "w")
        self.sink.write(shlex.join(self.command) + "\n")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            with interrupts_deferred():  # a Ctrl-C while it starts is raised once there is a process to stop
                self.process = subprocess.Popen(
                    self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
                )
        except KeyboardInterrupt:
            self.__exit__(KeyboardInterrupt, None, None)
            raise
        return self

    def epochs(self) -> Iterator[tuple[int, float]]:
        """(epoch, validation accuracy) as each epoch ends."""
        for line in self.process.stdout:
            self.sink.write(line)
            match = EPOCH_LINE.match(line)
            if match:
                if match[2] != "val":
                    raise UserError(f"main.py scored on {match[2]}, not on the validation images: {line.strip()}")
                yield int(match[1]), float(match[3]) / 100

    def __exit__(self, *exc) -> None:
        with interrupts_deferred():
            if self.process.poll() is None and exc[0] is not None:
                self.process.terminate()  # main.py takes SIGTERM as Ctrl-C
            try:
                rest, _ = self.process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                rest, _ = self.process.communicate()
            self.sink.write(rest or "")
            self.sink.close()
        self.returncode = self.process.returncode

    def reason(self) -> str:
        """main.py's error line, else the end of its output."""
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return next((line for line in lines if line.startswith("error: ")), " / ".join(lines[-2:]))


# --- the summary --------------------------------------------------------------------------------


def summary(study: optuna.Study, args: argparse.Namespace) -> dict[str, Any]:
    trials = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "epochs": {str(k): v for k, v in sorted(t.intermediate_values.items())},
            "flags": shlex.join(t.user_attrs.get("flags", [])),
            "stopped": t.user_attrs.get("stopped"),
        }
        for t in study.get_trials(deepcopy=False)
    ]
    best = max(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.value, default=None)
    return {
        "study": study.study_name,
        "storage": masked(args.storage),
        "scored_on": f"{args.val_size} held-out training images (main.py --val-size), seed {args.seed}",
        "best": None
        if best is None
        else {
            "number": best.number,
            "val_accuracy": best.value,
            "command": shlex.join(["python", "main.py", *best.user_attrs["flags"], "--seed", str(args.seed)]),
        },
        "trials": trials,
    }


def trial_row(trial: optuna.trial.FrozenTrial) -> str:
    value = "" if trial.value is None else f"{100 * trial.value:.2f}%"
    flags = shlex.join(trial.user_attrs.get("flags", []))
    return f"{trial.number:>5}  {trial.state.name:<8}  {value:>7}  {flags}"


def format_summary(result: dict[str, Any]) -> str:
    lines = [f"study {result['study']}, scored on {result['scored_on']}:", "trial  state     val acc  flags"]
    for t in result["trials"]:
        value = "" if t["value"] is None else f"{100 * t['value']:.2f}%"
        lines.append(f"{t['number']:>5}  {t['state']:<8}  {value:>7}  {t['flags']}")
    best = result["best"]
    if best:
        lines.append(f"best: trial {best['number']}, {100 * best['val_accuracy']:.2f}%: {best['command']}")
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)
