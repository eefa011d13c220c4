"""Interrupted runs: the one owner of the resume file, from the Ctrl-C that writes it to the run that finishes it.

    python main.py ...                                  # Ctrl-C: checkpoints/lenet5.resume.pt
    python main.py --resume checkpoints/lenet5.resume.pt

Resume.open() reads a resume file and checks, before any training, everything that decides
whether it can continue here: the file itself, its recipe against the flags given and the number
of processes; check_data() then compares the data's fingerprint, once the data is read. Every
mismatch is one line (a UserError).
"""

import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cli import EXIT_INTERRUPTED, UserError, interrupts_deferred

from distributed import World
from helper import CheckpointError, load_checkpoint, save_checkpoint, training_state
from LeNet5 import LeNet5
from recipes import Recipe, flag_text, recipe_from_saved
from train import TrainState


def resume_path(out: Path) -> Path:
    """Where an interrupted run that would have written `out` keeps its state: lenet5.pt -> lenet5.resume.pt."""
    return out.with_name(out.stem + ".resume.pt")


def finished_path(resume: Path) -> Path:
    """Where a resumed run writes its finished checkpoint: where the interrupted one would have."""
    return (
        resume.with_name(resume.name.removesuffix(".resume.pt") + ".pt")
        if resume.name.endswith(".resume.pt")
        else resume
    )


@dataclass(frozen=True)
class Resume:
    """A resume file that has passed every check: what to build (recipe, config) and the state to load."""

    path: Path
    recipe: Recipe
    config: dict[str, Any]  # LeNet5's constructor arguments
    training: dict[str, Any]  # a TrainState.state_dict()
    data_fingerprint: str | None  # data.fingerprint() of the data it trained on

    @classmethod
    def open(cls, path: Path, flags: dict[str, Any], world: World) -> "Resume":
        """flags: the recipe flags given on the command line (Recipe field names; "name" for --recipe,
        "full_c3" for --full-c3); a resume continues its own recipe, so none may differ from it."""
        checkpoint = load_checkpoint(path, resumable=True)
        recipe, config = _recorded(checkpoint, path)
        _refuse_other_flags(flags, recipe, config)
        processes = checkpoint["train_state"].get("world_size", 1)
        if processes != world.size:  # each process distorts its share with its own generator
            launcher = "python main.py" if processes == 1 else f"torchrun --nproc-per-node {processes} main.py"
            raise UserError(
                f"--resume {path} was trained by {processes} process(es); resume it with as many ({launcher})"
            )
        return cls(
            Path(path), recipe, config, training_state(checkpoint), checkpoint.get("data", {}).get("fingerprint")
        )

    def check_data(self, data_fingerprint: str) -> None:
        if self.data_fingerprint != data_fingerprint:
            raise UserError(
                f"--resume {self.path} was trained on other data (fingerprint {self.data_fingerprint}; these files "
                f"give {data_fingerprint}); pass the --data-dir it was trained on"
            )

    def restore(self, state: TrainState) -> None:
        """Load the saved state into a TrainState built from this recipe and config."""
        try:
            state.load_state_dict(self.training)
        except (KeyError, TypeError, IndexError, ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{self.path}: its training state does not fit this version ({first})") from None
        done = "nothing left to train; evaluating it" if state.epoch >= self.recipe.epochs else "continuing"
        print(f"resuming {self.path}: {state.epoch} of {self.recipe.epochs} epochs done, {done}")

    def finished(self, out: Path) -> None:
        """The finished checkpoint is safely written at `out`: the resume file's run is complete."""
        if self.path.name.endswith(".resume.pt") and self.path.resolve() != out.resolve():
            self.path.unlink(missing_ok=True)


def _recorded(checkpoint: dict[str, Any], path: Path) -> tuple[Recipe, dict[str, Any]]:
    """(recipe, model config) that a checkpoint recorded; a file from another version may carry
    fields this code does not know, or lack some it needs."""
    try:
        recipe, config = recipe_from_saved(checkpoint["train_state"]["recipe"]), checkpoint["config"]
        LeNet5(**config)
        epoch = checkpoint["train_state"]["epoch"]
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


def save_and_exit(
    training: dict[str, Any],
    config: dict[str, Any],
    data: dict[str, Any],
    out: Path,
    when: str,
    command: str,
    world: World,
) -> None:
    """Ctrl-C: save the resumable state (rank 0), say how to continue, exit 130 (every process)."""
    if world.is_main:
        path = resume_path(out)
        with interrupts_deferred():  # a second Ctrl-C (or torchrun's SIGTERM) waits for this
            save_checkpoint(path, config, training, data=data)
            print(f"\ninterrupted: saved the state {when} to {path}")
            print(f"continue with: {command} --resume {shlex.quote(str(path))}", flush=True)
    sys.exit(EXIT_INTERRUPTED)
