"""Interrupted runs: the one owner of the resume file, from the stop signal that writes it to the run that
finishes it.

    python main.py ...                                  # Ctrl-C: checkpoints/lenet5.resume.pt
    python main.py --resume checkpoints/lenet5.resume.pt

Resume.open() reads a resume file and checks, before any training, everything that decides
whether it can continue here: the file is whole (the digest written with it), its recipe against
the flags given and the number of processes; check_data() then compares the data's fingerprint,
once the data is read, and restore() checks that the saved state is consistent with itself and
with the model, optimizer, schedule and generators it is loaded into. Every mismatch is one line
(a UserError) and leaves the file as it was.
"""

import copy
import os
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from support.cli import EXIT_INTERRUPTED, EXIT_SOME_FAILED, UserError, one_line

import torch

from helper import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from support import signals
from support.distributed import World
from support.files import cut_name
from support.optimizers import make_optimizer
from support.optional import attempt
from support.recipes import Recipe, flag_text, recipe_from_saved
from train import TrainState


def resume_path(out: Path) -> Path:
    """Where an interrupted run that would have written `out` keeps its state: lenet5.pt -> lenet5.resume.pt."""
    return out.with_name(out.stem + ".resume.pt")


def finished_path(resume: Path) -> Path:
    """Where a resumed run writes its finished checkpoint: where the interrupted one would have (x.resume.pt ->
    x.pt); a resume file under another name: that name as a .pt (a x.pt itself, continued in place)."""
    if resume.name.endswith(".resume.pt"):
        return resume.with_name(resume.name.removesuffix(".resume.pt") + ".pt")
    return resume.with_suffix(".pt") if resume.suffix else resume.with_name(resume.name + ".pt")


@dataclass(frozen=True)
class Resume:
    """A resume file that has passed every check: what to build (recipe, config) and the state to load."""

    path: Path
    recipe: Recipe
    config: dict[str, Any]  # LeNet5's constructor arguments
    training: dict[str, Any]  # a TrainState.state_dict()
    data_fingerprint: str | None  # data.fingerprint() of the data it trained on
    identity: tuple[int, ...] = ()  # the file as it was read (device, inode, size, change time): removed only so

    @classmethod
    def open(cls, path: Path, flags: dict[str, Any], world: World) -> "Resume":
        """flags: the recipe flags given on the command line (Recipe field names; "name" for --recipe,
        "full_c3" for --full-c3); a resume continues its own recipe, so none may differ from it."""
        identity = _identity(path)
        checkpoint = load_checkpoint(path, resumable=True)
        if not checkpoint.sealed():
            raise CheckpointError(
                f"{path}: its contents changed after it was saved (the digest written with it does not match): "
                "damaged or edited, it cannot be resumed safely; train anew"
            )
        recipe, config = _recorded(checkpoint, path)
        _refuse_other_flags(flags, recipe, config)
        processes = checkpoint.train_state.get("world_size", 1)
        if processes != world.size:  # each process distorts its share with its own generator
            launcher = "python main.py" if processes == 1 else f"torchrun --nproc-per-node {processes} main.py"
            raise UserError(
                f"--resume {path} was trained by {processes} process(es); resume it with as many ({launcher})"
            )
        fingerprint = checkpoint.data.get("fingerprint")
        return cls(Path(path), recipe, config, checkpoint.training_state(), fingerprint, identity)

    def check_data(self, data_fingerprint: str) -> None:
        if self.data_fingerprint != data_fingerprint:
            raise UserError(
                f"--resume {self.path} was trained on other data (fingerprint {self.data_fingerprint}; these files "
                f"give {data_fingerprint}); pass the --data-dir it was trained on"
            )

    def restore(self, state: TrainState) -> None:
        """Load the saved state into a TrainState built from this recipe and config, once it is shown
        consistent with it."""
        try:
            problem = _inconsistency(self.training, state)
        except (KeyError, TypeError, IndexError, AttributeError, ValueError) as err:
            problem = f"its training state lacks a part this version needs ({err!r})"
        if problem:
            raise CheckpointError(f"{self.path}: {problem}; it cannot be resumed, train anew")
        try:
            state.load_state_dict(self.training)
        except (KeyError, TypeError, IndexError, ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{self.path}: its training state does not fit this version ({first})") from None
        done = "nothing left to train; evaluating it" if state.epoch >= self.recipe.epochs else "continuing"
        print(f"resuming {self.path}: {state.epoch} of {self.recipe.epochs} epochs done, {done}")

    def finished(self, out: Path) -> None:
        """The finished checkpoint is safely written at `out`: the resume file's run is complete, and the file is
        removed; one that cannot be (a read-only folder) is a warning, since the run itself is saved."""
        if self.path.name.endswith(".resume.pt") and self.path.resolve() != out.resolve():
            now = _identity(self.path)
            if now and now != self.identity:  # another run wrote there meanwhile: that file is its own
                print(f"warning: left {self.path}: it changed after this run resumed from it", file=sys.stderr)
                return
            attempt(f"removing {self.path} (delete it yourself)", lambda: self.path.unlink(missing_ok=True))


def _identity(path: Path) -> tuple[int, ...]:
    try:
        st = Path(path).stat()
    except OSError:
        return ()
    return st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns


def _inconsistency(saved: dict[str, Any], state: TrainState) -> str | None:
    """What is wrong with a saved TrainState.state_dict() for `state` (built from the same recipe), or None."""
    epoch, history, steps = saved["epoch"], saved["history"], state.history.steps_per_epoch
    if history["steps_per_epoch"] != steps:
        return f"its epochs had {history['steps_per_epoch']} steps, these loaders give {steps}"
    if [e["epoch"] for e in history["epochs"]] != list(range(1, epoch + 1)):
        return f"its history records {len(history['epochs'])} epochs where it says {epoch} are done"
    if len(history["step_losses"]) != epoch * steps:
        return f"its history holds {len(history['step_losses'])} step losses for {epoch} epochs of {steps} steps"
    if saved["scheduler"]["last_epoch"] != epoch * steps:
        return f"its learning-rate schedule is at step {saved['scheduler']['last_epoch']}, not {epoch * steps}"
    if (state.average is not None) != ("average" in saved):
        return "its weight average does not match its recipe's --ema-decay"
    if state.average is not None and saved["average"]["updates"] != epoch * steps:  # one update per step
        return f"its weight average has {saved['average']['updates']!r} updates, not {epoch * steps}"
    return _optimizer_inconsistency(saved["optimizer"], epoch, state) or _rng_inconsistency(saved["rng"], state)


def _optimizer_inconsistency(saved: dict[str, Any], epoch: int, state: TrainState) -> str | None:
    """The saved optimizer state must be one that this recipe's optimizer writes: the same groups, parameters
    and settings, and after a finished epoch, for every parameter the buffers one step creates, of their shapes."""
    live = state.optimizer.state_dict()["param_groups"]  # the same recipe's, its parameters numbered as saved
    groups = saved["param_groups"]
    if [group.get("params") for group in groups] != [group["params"] for group in live]:
        return f"its optimizer has {len(groups)} parameter group(s) that do not match the model's parameters"
    for group, like in zip(groups, live):  # every setting but the current lr is equal
        differ = sorted(set(group) ^ set(like)) or [key for key in like if key != "lr" and group[key] != like[key]]
        if differ:
            return f"its optimizer's settings ({', '.join(map(str, differ))}) are not its recipe's"
    expected = _one_steps_state(state) if epoch > 0 else {}
    if set(saved["state"]) != set(expected):
        return f"its optimizer holds state for {len(saved['state'])} parameters, not {len(expected)}"
    for index, values in saved["state"].items():
        if set(values) != set(expected[index]):
            return f"its optimizer's state for parameter {index} holds {sorted(values)}, not {sorted(expected[index])}"
        for name, buffer in values.items():  # momentum_buffer (SGD, Muon); exp_avg, exp_avg_sq, step (Adam)
            like = expected[index][name]
            if type(buffer) is not type(like) or (
                isinstance(like, torch.Tensor) and (buffer.shape, buffer.dtype) != (like.shape, like.dtype)
            ):
                return f"its optimizer's {name} for parameter {index} does not have that parameter's shape"
    return None


def _one_steps_state(state: TrainState) -> dict[int, dict[str, Any]]:
    """The optimizer state that one step of this recipe's optimizer writes, by parameter index (on a copy)."""
    model = copy.deepcopy(state.model)
    optimizer = make_optimizer(model, state.recipe)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    return optimizer.state_dict()["state"]


def _rng_inconsistency(saved: dict[str, Any], state: TrainState) -> str | None:
    """Each saved generator state must be a state of its generator: one per process where each has its own."""
    current = {
        "torch": [torch.get_rng_state()] * state.world.size,
        "shuffle": state.generators.shuffle.get_state(),  # the same in every process: saved once
        "augment": [state.generators.augment.get_state()] * state.world.size,
    }
    for name, like in current.items():
        values, like = (saved[name], like) if isinstance(like, list) else ([saved[name]], [like])
        if len(values) != len(like):
            return f"its {name} random states are for {len(values)} process(es), not {len(like)}"
        if any(
            not isinstance(v, torch.Tensor) or v.dtype != w.dtype or v.shape != w.shape for v, w in zip(values, like)
        ):
            return f"its {name} random generator state is damaged (not a {tuple(like[0].shape)} {like[0].dtype} tensor)"
    return None


def _recorded(checkpoint: Checkpoint, path: Path) -> tuple[Recipe, dict[str, Any]]:
    """(recipe, model config) that a checkpoint recorded; a file from another version may carry
    fields this code does not know, or lack some it needs."""
    try:
        recipe, config = recipe_from_saved(checkpoint.train_state["recipe"]), checkpoint.config
        epoch = checkpoint.train_state["epoch"]
        if type(epoch) is not int or not 0 <= epoch <= recipe.epochs:
            raise ValueError(f"its epoch {epoch!r} is not one of its recipe's")
    except (TypeError, KeyError, AttributeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: its recipe or model config does not fit this version ({err}); retrain"
        ) from None
    return recipe, config


def _refuse_other_flags(flags: dict[str, Any], recipe: Recipe, config: dict[str, Any]) -> None:
    saved = asdict(recipe)
    given = {k: v for k, v in flags.items() if k != "full_c3"}
    differ = [f"{flag_text(k, v)} (it has {flag_text(k, saved[k])})" for k, v in given.items() if saved[k] != v]
    if flags.get("full_c3") and config.get("c3_table", True):
        differ.append("--full-c3 (the checkpoint uses LeCun's C3 table)")
    if differ:
        raise UserError(
            f"--resume continues the checkpoint's own recipe, and these flags differ from it: {'; '.join(differ)}. "
            "Drop them, or train anew without --resume"
        )


def continue_command(argv: list[str], world: World) -> str:
    """This run's command without its --resume: `{} --resume PATH` continues it, with the same flags."""
    kept = [a for i, a in enumerate(argv) if a != "--resume" and (i == 0 or argv[i - 1] != "--resume")]
    kept = [a for a in kept if not a.startswith("--resume=")]
    launcher = (
        ["torchrun", "--nproc-per-node", str(world.size), "main.py"] if world.distributed else ["python", "main.py"]
    )
    return shlex.join([*launcher, *kept])


@dataclass(frozen=True)
class InterruptedRun:
    """What a run needs to save itself when it is stopped: where, with what, and how to continue."""

    out: Path  # the finished checkpoint's path; the resume file goes beside it
    config: dict[str, Any]
    data: dict[str, Any]
    command: str  # continue_command(): `{command} --resume PATH` continues
    world: World
    found: tuple[int, ...] = field(init=False)  # the resume file beside `out` at the start: only the resumed one

    def __post_init__(self) -> None:
        object.__setattr__(self, "found", _identity(resume_path(self.out)))

    def save_and_exit(self, training: dict[str, Any], when: str, failure: str | None = None) -> None:
        """Rank 0 saves the resumable state and says how to continue; every process exits (130 after a
        Ctrl-C or SIGTERM, 1 when another process failed: `failure` says which and how)."""
        signals.ignore_stops()  # the run is ending: a second Ctrl-C, or torchrun's SIGTERM after a peer died, waits
        if self.world.is_main:
            path, instead = self._save(training, when, failure)
            command = self.command if not instead else _with_out(self.command, self.out)
            continuing = f"continue with: {command} --resume {shlex.quote(str(path))}"
            saved = one_line(f"saved the state {when} to {path}{instead}")
            if failure:
                print(f"error: {failure}; {saved}; {continuing}", file=sys.stderr, flush=True)
            else:
                print(f"\ninterrupted: {saved}\n{continuing}", flush=True)
        sys.exit(EXIT_SOME_FAILED if failure else EXIT_INTERRUPTED)

    def _save(self, training: dict[str, Any], when: str, failure: str | None) -> tuple[Path, str]:
        """Save beside the checkpoint, or, where that cannot be written (its disk full, a file in its folder's place),
        in the system's temporary folder: (where it went, and why not beside the checkpoint, or "")."""
        path = resume_path(self.out)
        there = _identity(path)
        if there in ((), self.found):  # nothing, or the file this run resumed from: replaced
            try:
                save_checkpoint(path, self.config, training, data=self.data)
                return path, ""
            except (UserError, OSError) as err:
                beside = err
        else:  # another run's resume file, copied there meanwhile: kept
            beside = f"{path} appeared while this run trained, and is kept: move it before continuing"
        stem = cut_name(self.out.stem, 150)  # (with the date, pid and suffix, within a file system's 255 bytes)
        spare = Path(tempfile.gettempdir()) / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.resume.pt"
        try:
            save_checkpoint(spare, self.config, training, data=self.data)
            older = f"; move the older {path} before continuing" if there and there == self.found else ""
            return spare, f" instead of beside the checkpoint ({beside}){older}"
        except (UserError, OSError) as err:
            epochs = training["epoch"]
            lost = f"the {epochs} finished epoch(s) of this run are lost" if epochs else "no epoch had finished"
            older = f"; the {path.name} there holds another state" if path.exists() else ""
            stopped = failure or "interrupted"
            raise UserError(f"{stopped}, and the state {when} could not be saved: {beside}; nor in "
                            f"{spare.parent}: {err}; {lost}{older}") from None  # fmt: skip


def _with_out(command: str, out: Path) -> str:
    """`command` with --out `out` (a resume file saved elsewhere would otherwise finish beside itself)."""
    given = any(arg == "--out" or arg.startswith("--out=") for arg in shlex.split(command))
    return command if given else f"{command} --out {shlex.quote(str(out))}"
