"""Training across processes and machines: the process group that torchrun starts, and the few
collectives the training loop needs besides the gradients (DistributedDataParallel averages those).

    torchrun --standalone --nproc-per-node 2 main.py ...

Plain `python main.py` never touches any of this: its World is a world of one, every collective
below returns its input, and no process group exists.
"""

import contextlib
import hashlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn

from support.cli import PROJECT_DIR, UserError, end_process, torchrun_rank

import torch
import torch.distributed as dist

from support import signals


@dataclass(frozen=True)
class World:
    rank: int = 0  # this process among all of them
    local_rank: int = 0  # this process on its machine (picks the GPU)
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints, writes files and evaluates the final model."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


ONE = World()  # plain `python main.py`: a world of one process


def launched_by_torchrun() -> bool:
    return torchrun_rank() is not None


# A peer silent this long is taken for failed. LENET5_COLLECTIVE_TIMEOUT_S changes it (a slow network;
# the tests, which stop a worker on purpose).
COLLECTIVE_TIMEOUT_S = float(os.environ.get("LENET5_COLLECTIVE_TIMEOUT_S", 120))


def join(device: torch.device, timeout_s: float = COLLECTIVE_TIMEOUT_S) -> tuple[World, torch.device]:
    """Join torchrun's process group (gloo on the CPU, nccl on CUDA, one GPU per process); returns
    (world, the device this process uses). Outside torchrun: a world of one, the device unchanged.

    The timeout bounds every collective, so a process that dies cannot leave the others waiting forever.
    """
    if not launched_by_torchrun():
        stray = [name for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if name in os.environ]
        if stray:
            raise UserError(
                f"{' and '.join(stray)} {'is' if len(stray) == 1 else 'are'} set, but this process was not started "
                "by torchrun: run `torchrun --nproc-per-node N main.py ...`, or unset them for one process"
            )
        return ONE, device
    world = World(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"torchrun trains on the CPU (gloo) or on CUDA GPUs (nccl), not on {device.type}: --device cpu")
    if device.type == "cuda":
        if torch.cuda.device_count() <= world.local_rank:
            raise UserError(f"local rank {world.local_rank} has no GPU of its own ({torch.cuda.device_count()} here)")
        torch.cuda.set_device(world.local_rank)
        device = torch.device("cuda", world.local_rank)
    # On CUDA, nccl reduces the gradients; the few small CPU tensors (stop flag, accuracy counts) go through gloo.
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return world, device


def exit_skipping_teardown(run: Callable[[], None]) -> NoReturn:
    """Run the entry point, then end the process with its exit status through cli.end_process (which run_cli
    already does when this project's file is the program): no interpreter teardown, whose freeing of torch is a
    wait for nothing and, under torchrun, may abort in gloo's threads; signals handled to the very end. Every
    file is written and synced by then; an unexpected exception still ends the usual way, with its traceback."""
    try:
        run()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    except KeyboardInterrupt:  # a stop while run_cli was already finishing
        code = signals.EXIT_INTERRUPTED
    end_process(code)


@contextlib.contextmanager
def one_job(world: World) -> Iterator[None]:
    """The body of a job run by every process: rank 0 alone prints; a process whose peer failed (and
    said why) exits 1 without a second traceback; the process group is left at the end."""
    try:
        with contextlib.redirect_stdout(sys.stdout if world.is_main else open(os.devnull, "w")):
            yield
    except RuntimeError as err:
        if not peer_failed(err, world):
            raise
        sys.exit(1)
    finally:
        leave()


def leave() -> None:
    if dist.is_initialized():  # (torchrun with one process makes a group too)
        dist.destroy_process_group()


def sum_over_ranks(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The element-wise sum over all ranks (in place; every rank gets it)."""
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather(obj: Any, world: World) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not world.distributed:
        return [obj]
    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, obj)
    return gathered


STOP_CHECK_STEPS = 10  # under torchrun, how often the processes agree on a pending Ctrl-C (an all-reduce each)


class StopFlag:
    """A stop signal under torchrun. Were each process to stop where the signal found it, some would be left
    waiting inside a gradient all-reduce for a peer that has gone. Instead each only notes the signal
    (signals.Noted), and all of them agree at fixed points (a tiny all-reduce every few steps, and at
    the end of each epoch) to stop at that same point. In a world of one it does nothing: a stop
    interrupts at once."""

    def __init__(self, world: World):
        self.world, self._held, self.noted = world, signals.Noted(), False

    def __enter__(self) -> "StopFlag":
        if self.world.distributed:
            self._held.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._held.__exit__(*exc)
        self.noted = self.noted or self._held.noted

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Within the block, in any world, a stop signal is noted rather than raised: the block (the end of an
        epoch: its record and its snapshot) always completes, and agreed() tells afterwards."""
        with signals.Noted() as held:
            yield
        self.noted = self.noted or held.noted

    def check(self, step: int) -> None:
        """Every STOP_CHECK_STEPS steps, raise KeyboardInterrupt on every process once any of them noted a signal."""
        if self.world.distributed and step % STOP_CHECK_STEPS == 0 and self.agreed():
            raise KeyboardInterrupt

    def agreed(self) -> bool:
        """True on every process as soon as any of them has noted a signal."""
        noted = self.noted or self._held.noted
        if not self.world.distributed:
            return noted
        flag = torch.tensor([int(noted)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted")


def peer_failure(err: BaseException, world: World) -> str | None:
    """When a collective failed because another process went away or stopped answering (as gloo and
    NCCL say it), which one and how, in words; otherwise None."""
    if not (world.distributed and isinstance(err, RuntimeError)):
        return None
    text = str(err)
    who = f"rank {1 - world.rank}" if world.size == 2 else "another process of this job"
    if any(phrase in text for phrase in GONE):
        return f"{who} ended (killed, or failed on its own machine)"
    if "timed out" in text.lower() or "timeout" in text.lower():
        return f"{who} stopped answering (nothing from it within {COLLECTIVE_TIMEOUT_S:g} s)"
    return None


def peer_failed(err: BaseException, world: World) -> bool:
    return peer_failure(err, world) is not None


def agree(error: UserError | None, world: World, facts: dict[str, Any] | None = None) -> None:
    """A collective check-point: if any rank failed, every rank raises the first failure (a user error on
    one machine, e.g. a wrong --data-dir there, then ends the whole job with one clear line). Otherwise
    every rank's `facts` (its recipe, the data's fingerprint, the code's version) must equal rank 0's: a
    process started with another --lr, other data or other code would train a model of its own, silently."""
    if not world.distributed:
        if error is not None:
            raise error
        return
    gathered = gather((error and str(error), facts), world)
    failures = [(rank, message) for rank, (message, _) in enumerate(gathered) if message]
    if failures:
        rank, message = failures[0]
        raise _everywhere(f"rank {rank}: {message}")
    reference = gathered[0][1] or {}
    for rank, (_, theirs) in enumerate(gathered[1:], start=1):
        differences = _differences(reference, theirs or {})
        if differences:
            raise _everywhere(
                f"rank {rank} was started unlike rank 0 ({'; '.join(differences[:3])}): start every process "
                "with the same flags, data and code"
            )


def _everywhere(message: str) -> UserError:
    agreed = UserError(message)
    agreed.everywhere = True  # every process raises it: rank 0 alone reports it
    return agreed


def _differences(ours: dict[str, Any], theirs: dict[str, Any], prefix: str = "") -> list[str]:
    """'name: theirs (rank 0: ours)' for every leaf where two nested dicts differ."""
    found = []
    for key in sorted(set(ours) | set(theirs), key=str):
        a, b = ours.get(key), theirs.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key} {b!r} (rank 0: {a!r})")
    return found


def code_version() -> str:
    """A digest of the package's Python files: the processes of one job must run the same code."""
    digest = hashlib.sha256()
    for path in sorted(PROJECT_DIR.glob("*.py")) + sorted(PROJECT_DIR.glob("*/*.py")):
        if path.parent.name in ("support", "extras") or path.parent == PROJECT_DIR:
            digest.update(path.relative_to(PROJECT_DIR).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]
