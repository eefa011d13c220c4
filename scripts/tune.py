"""Choose a recipe's values with Optuna, scored on a validation hold-out, never on the test set.

Each trial draws values from a search space and trains with them in this process (the code of `python
main.py`: data.make_loaders, train.TrainState, train.fit), holding out --val-size training images; it
reports each epoch's accuracy on them to Optuna from fit's epoch hook as the epoch ends, and a trial that
falls behind (below the median of earlier trials at the same epoch, or below --prune-below) is stopped
there. A trial's score is its last epoch's validation accuracy; every trial trains with the same --seed,
so trials differ by their values alone.

The study lives in a database (--storage; a SQLite file by default). Workers that run the same command,
on one machine or, with a database server, on several, share one study: together they finish --trials
trials (completed or pruned). A trial stopped by Ctrl-C or a training error is failed and not counted;
a worker that dies mid-trial (killed, its machine lost) stops sending Optuna's heartbeat, and the next
worker to start a trial fails that one and queues its values to run again. Workers on one machine take
turns to start trials, so they start exactly that many; on several machines two workers that ask at the
same instant may start one more. The summary's command is the best trial's recipe for `python main.py`,
without the hold-out.

    python -m scripts.tune --space fast --trials 30 --data-dir ../shared/mnist --out docs/tune.json
    python -m scripts.tune --space my_space.json --storage postgresql://user@host/optuna   # on each machine

--space is a preset (fast, fast3, best) or a JSON file that maps flags of main.py's "training recipe" group
(lr, momentum, batch_size or batch-size, ...; see `python main.py --help`) to one of
    {"low": 0.005, "high": 0.05, "log": true}   a number in [low, high], whole when both are ("step" optional)
    {"choices": ["linear", "cosine"]}           one of these
    0.95                                        this value in every trial
The values it does not name are the default recipe's. A trial that draws "augment": false leaves out
the distortion values (rotation, zoom, shift, elastic), one that draws momentum 0 or an optimizer other
than SGD leaves out nesterov, and one that draws SGD leaves out beta2 (main.py refuses those pairs).
The space is checked whole before the storage is opened: every entry's form, its values by main.py's own
flag rules, and one draw by Optuna of every value.
"""

import argparse
import contextlib
import functools
import json
import os
import re
import shlex
import sqlite3
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.cli import (
    PROJECT_DIR,
    CliParser,
    UserError,
    add_device_flag,
    add_json_flag,
    add_limit_flag,
    number,
    output_file,
    run_cli,
)

import optuna
import sqlalchemy.exc
import torch
from optuna.storages._heartbeat import get_heartbeat_thread  # what Study.optimize itself runs around a trial
from optuna.trial import Trial, TrialState

from data import MNIST, add_data_args, data_source, make_loaders
from support import signals
from support.devices import choose_device
from support.files import check_output_file, json_kind, json_text, turn, write_json
from support.recipes import DISTORTIONS, Recipe, add_recipe_args, resolve_recipe
from train import TrainingDiverged, TrainingInterrupted, TrainState, fit

SUMMARY = json_kind("a study summary", {"study", "trials"})  # --out: replaces only its own kind

DEFAULT_STORAGE = f"sqlite:///{PROJECT_DIR / 'runs' / 'tune' / 'optuna.db'}"
SET_BY_TUNE = ("seed", "val_size", "limit")  # recipe flags that tune.py's own flags set, the same for every trial
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
# A RUNNING trial whose worker has been silent for GRACE_S is failed and run again (the tests shorten both).
HEARTBEAT_S = int(os.environ.get("LENET5_TUNE_HEARTBEAT_S", 10))
GRACE_S = int(os.environ.get("LENET5_TUNE_GRACE_S", 60))
RETRIES = 2  # how often a dead worker's trial is queued again
OPTUNA_TABLES = {"studies", "version_info", "alembic_version"}  # any of them: a SQLite file is Optuna's

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
    p.add_argument("--seed", type=number(int, 0, 2**63 - 1), default=0, help="every trial's main.py --seed")
    add_limit_flag(p)
    add_device_flag(p)
    add_data_args(p)
    p.add_argument("--out", type=output_file, help="write the summary here (JSON)")
    add_json_flag(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial, our own
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # (the heartbeat's parts)
    # ask() warns that a heartbeat is meant for Study.optimize; this loop runs the same heartbeat thread around
    # each trial as optimize does (run_and_tell), and asks itself so that workers start exactly --trials.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    space = load_space(args.space)
    name = args.study_name or Path(args.space).stem
    if not re.fullmatch(r"[\w.-]+", name):
        raise UserError(f"--study-name {name!r}: use letters, digits, '.', '-' and '_'")
    database = database_file(args.storage)
    if args.out:
        check_output_file(args.out, "--out", kind=SUMMARY, example="tune.json")
        if database and args.out.resolve() == database.resolve():
            raise UserError(f"--out {args.out} is the study's own database (--storage); give the summary another name")
    device = choose_device(args.device)
    mnist = data_source(args).open()  # once, for every trial
    check_data(mnist, space, args.val_size, args.limit)
    settings = {"space": space, "val_size": args.val_size, "seed": args.seed, "limit": args.limit}
    study = open_study(args.storage, name, make_pruner(args.pruner, args.prune_below), settings)
    progress = sys.stderr if args.json else sys.stdout  # with --json, stdout is the summary alone
    database, guard = database_file(args.storage), functools.partial(storage_call, args.storage)
    fixed = {"seed": args.seed, "val_size": args.val_size, "limit": args.limit}
    with contextlib.redirect_stdout(progress):  # (each trial's epoch lines)
        while (trial := next_trial(study, args.trials, database, guard)) is not None:
            finished = run_and_tell(study, trial, draw(trial, space), fixed, mnist, device, guard)
            print(trial_row(finished), flush=True)
    result = guard(lambda: summary(study, args.storage, args.val_size, args.seed))
    if args.out:
        write_json(result, args.out)
    print(json_text(result).rstrip() if args.json else format_summary(result))


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
    dry_draw(space)
    return space


def dry_draw(space: dict[str, Any]) -> None:
    """One draw of every value by Optuna itself, in memory, and the drawn recipe through main.py's checks: a
    range Optuna cannot draw from (a step that does not fit, choices of a kind it cannot store) is said now."""
    trial = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    try:
        values = draw(trial, space)
    except (ValueError, TypeError) as err:
        raise UserError(f"--space: Optuna cannot draw from it: {first_line(err)}") from None
    FLAGS.parse_args(recipe_tokens(values))
    resolve_recipe("default", values)


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
    if any(type(v) not in (int, float) for v in (low, high)) or not low <= high:
        raise UserError(f"--space: {name}: low and high are numbers, low <= high; got {entry}")
    if step is not None and (type(step) not in (int, float) or not step > 0):
        raise UserError(f"--space: {name}: step is a number above 0; got {step!r}")
    if type(entry.get("log", False)) is not bool:  # "false" is a non-empty string, which Optuna takes as true
        raise UserError(f"--space: {name}: log is true or false; got {entry['log']!r}")
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


def check_data(mnist: MNIST, space: dict[str, Any], val_size: int, limit: int | None) -> None:
    """make_loaders' checks of the hold-out and of the largest batch the space can draw, made before the storage
    is opened: a trial would meet them only once the study was stored."""
    images = len(mnist.train_labels[:limit])
    if val_size >= images:
        raise UserError(f"--val-size {val_size} must be between 0 and {images - 1} (the training images)")
    entry = space.get("batch_size", resolve_recipe("default", {}).batch_size)
    largest = max(entry.get("choices") or [entry["high"]]) if isinstance(entry, dict) else entry
    if largest > images - val_size:
        raise UserError(
            f"--space: batch_size {largest} is more than the {images - val_size} training images that --limit "
            "and --val-size leave; draw smaller batches (or give a larger --limit, or a smaller --val-size)"
        )


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


def taking_turns(database: Path | None) -> contextlib.AbstractContextManager:
    """Workers on this machine that share a SQLite file take turns (support/files.turn). A server database has no
    such lock, nor has Windows: two workers that ask at the same instant may start one too many."""
    return turn(database) if database else contextlib.nullcontext()


def open_study(storage: str, name: str, pruner: optuna.pruners.BasePruner, settings: dict[str, Any]) -> optuna.Study:
    """The study `name` in `storage`, created by the first worker; the others must share its settings. The
    storage keeps each running trial's heartbeat, so that a dead worker's trial is failed and queued again."""
    database = database_file(storage)
    if database:
        check_output_file(database, "--storage", kind=None, example="optuna.db")  # (opened, added to)
        tables = storage_call(storage, lambda: foreign_tables(storage, database))
        if tables:
            raise UserError(
                f"--storage {database} is a SQLite database of something else (tables: {', '.join(tables)}); "
                "give a new file or an Optuna study's"
            )

    def opened() -> optuna.Study:
        with signals.deferred(), taking_turns(database):
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=RETRIES)
            rdb = optuna.storages.RDBStorage(storage, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                             heartbeat_stale_trial_callback=retry)  # fmt: skip
            study = optuna.create_study(
                storage=rdb, study_name=name, direction="maximize", pruner=pruner, load_if_exists=True
            )
            if "settings" not in study.user_attrs:
                study.set_user_attr("settings", settings)
            return study

    study = storage_call(storage, opened)
    saved = study.user_attrs["settings"]
    differ = [key for key in settings if saved.get(key) != settings[key]]
    if differ:
        raise UserError(
            f"study {name!r} in that storage was started with another {', '.join(differ)} ({saved}); "
            "give another --study-name"
        )
    return study


def foreign_tables(storage: str, database: Path) -> list[str]:
    """The tables of an existing SQLite file that holds no Optuna study (Optuna would add its own beside them),
    read without writing; none for a new or empty file, or for Optuna's."""
    if not database.is_file() or not database.stat().st_size:
        return []
    try:  # as long as Optuna would wait
        timeout = float(sqlalchemy.engine.make_url(storage).query.get("timeout", 5))
    except (TypeError, ValueError):  # given twice, or not a number: Optuna's own connect says what is wrong
        timeout = 5.0
    with contextlib.closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)) as db:
        tables = sorted(name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    return [] if OPTUNA_TABLES & set(tables) else [name for name in tables if not name.startswith("sqlite_")]


def storage_call(storage: str, call):
    """call(), with a failure of the storage (a bad URL, a locked, full or read-only database) as one line that
    names its first cause, not Optuna's chain of tracebacks."""
    try:
        return call()
    except (
        ValueError,
        ImportError,
        sqlite3.Error,
        sqlalchemy.exc.SQLAlchemyError,
        optuna.exceptions.StorageInternalError,
    ) as err:
        raise UserError(f"--storage {masked(storage)}: {root_cause(err)}") from None


def root_cause(err: BaseException) -> str:
    """The first error of a chain (sqlite3's "database is locked", say), in one line."""
    while (err.__cause__ or err.__context__) is not None and not isinstance(err, sqlalchemy.exc.DBAPIError):
        err = err.__cause__ or err.__context__
    if isinstance(err, sqlalchemy.exc.DBAPIError) and err.orig is not None:
        err = err.orig
    return first_line(err)


def masked(url: str) -> str:
    """The URL with its password hidden."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def next_trial(study: optuna.Study, n_trials: int, database: Path | None, guard: Callable) -> Trial | None:
    """A new trial (a dead worker's first, queued again), or None once the study holds n_trials that are
    finished, under way or queued."""
    trial = None

    def asked() -> Trial | None:
        nonlocal trial
        with signals.deferred(), taking_turns(database):
            optuna.storages.fail_stale_trials(study)  # silent workers' trials: failed, and queued to run again
            queued = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if queued or len(study.get_trials(deepcopy=False, states=COUNTED)) < n_trials:
                trial = study.ask()  # (a queued trial first)
                # Its first heartbeat at once: Optuna never counts a trial without one as stale, so a worker
                # killed before its heartbeat thread had beaten would leave it RUNNING for ever.
                study._storage.record_heartbeat(trial._trial_id)
        return trial

    try:
        return guard(asked)
    except KeyboardInterrupt:  # held until the trial existed: it must not stay RUNNING
        if trial is not None:
            with signals.deferred():
                study.tell(trial, state=TrialState.FAIL)
        raise


# --- one trial ----------------------------------------------------------------------------------


def run_and_tell(study: optuna.Study, trial: Trial, values: dict[str, Any], fixed: dict[str, Any], mnist: MNIST,
                 device: torch.device, guard: Callable) -> optuna.trial.FrozenTrial:  # fmt: skip
    """Train one trial and store its outcome: completed, pruned (also when its loss diverged) or failed (Ctrl-C,
    or an error, which is then raised)."""
    state, value = TrialState.FAIL, None
    trial.set_user_attr("flags", recipe_tokens(values))
    try:
        with get_heartbeat_thread(trial._trial_id, study._storage):
            value = train(trial, resolve_recipe("default", {**values, **fixed}), mnist, device)
        state = TrialState.COMPLETE
    except optuna.TrialPruned:
        state = TrialState.PRUNED
    except TrainingDiverged as err:  # these values train badly: hopeless, not broken
        trial.set_user_attr("stopped", str(err))
        state = TrialState.PRUNED
    except TrainingInterrupted:
        raise KeyboardInterrupt from None  # (the trial is failed below; the study is left as it is)
    finally:  # also on Ctrl-C and errors: a trial left RUNNING would count against --trials until it went stale
        with signals.deferred():
            finished = guard(lambda: study.tell(trial, value, state=state))
    return finished


def train(trial: Trial, recipe: Recipe, mnist: MNIST, device: torch.device) -> float:
    """Train `recipe` as main.py does, reporting each epoch's validation accuracy; returns the last one."""
    loaders = make_loaders(mnist, recipe, device)
    state = TrainState({"c3_table": True}, recipe, loaders, device)

    def report(state: TrainState) -> None:
        stats = state.history.epochs[-1]
        trial.report(stats.eval_accuracy, stats.epoch)
        if trial.should_prune():
            trial.set_user_attr("stopped", f"pruned after epoch {stats.epoch}")
            raise optuna.TrialPruned()

    fit(state, loaders, log_interval=10**9, on_epoch=report)
    return state.history.epochs[-1].eval_accuracy


# --- the summary --------------------------------------------------------------------------------


def summary(study: optuna.Study, storage: str, val_size: int, seed: int) -> dict[str, Any]:
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
        "storage": masked(storage),
        "scored_on": f"{val_size} held-out training images (main.py --val-size), seed {seed}",
        "best": None
        if best is None
        else {
            "number": best.number,
            "val_accuracy": best.value,
            "command": shlex.join(["python", "main.py", *best.user_attrs["flags"], "--seed", str(seed)]),
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
