"""The plumbing every entry point shares: checkpoints (the format, written atomically, read back
and checked), the command-line conventions, and the choice of device and memory layout."""

import argparse
import contextlib
import io
import json
import math
import os
import pickletools
import signal
import sys
import tempfile
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from LeNet5 import INPUT_NORMALIZATION, LeNet5

PROJECT_DIR = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = PROJECT_DIR / "checkpoints" / "lenet5.pt"  # what main.py writes and the others read
DEFAULT_REPORT_DIR = PROJECT_DIR / "reports"
CHECKPOINT_FORMAT = 2  # 2: train_state carries a data fingerprint and the full recipe
FLOAT32_MAX = torch.finfo(torch.float32).max
MEMORY_FORMAT = torch.channels_last  # measured ~10 % faster convolutions on the CPU (bench.py)


# --- command-line conventions -------------------------------------------------------------------


class UserError(Exception):
    """A mistake the user can fix (missing file, bad flag, wrong checkpoint): one line, exit 2."""

    everywhere = False  # under torchrun: True when every process raises it alike (then rank 0 alone reports it)


class CheckpointError(UserError):
    """A checkpoint that is missing, damaged, unsafe, non-finite or of another architecture."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after every flag (unless its help already says it); the module docstring printed as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.help and "(default:" in action.help else super()._get_help_string(action)


class CliParser(argparse.ArgumentParser):
    """argparse with the project's conventions: defaults in --help, one-line errors (exit 2)."""

    def __init__(self, description: str | None):
        # allow_abbrev=False: `--res X` is not silently taken for --resume (or --out for --out-dir)
        super().__init__(description=description, formatter_class=_HelpFormatter, allow_abbrev=False)

    def error(self, message: str):
        # Under torchrun every process parses the same flags: rank 0 alone says what is wrong with them.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n" if os.environ.get("RANK", "0") == "0" else None)


def number(kind: type = int, low: float | None = None, high: float | None = None, low_open: bool = False):
    """An argparse type: a finite int or float in [low, high] ((low, high] with low_open)."""
    noun = "an integer" if kind is int else "a finite number"
    lower = "" if low is None else f"> {low}" if low_open else f">= {low}"
    bounds = " and ".join(part for part in (lower, "" if high is None else f"<= {high}") if part)

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {noun} {bounds}, got {text!r}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        if (kind is float and not math.isfinite(value)) or too_low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {noun} {bounds}, got {text}")
        if kind is float and abs(value) > FLOAT32_MAX:  # training runs in float32: it would overflow there
            raise argparse.ArgumentTypeError(f"must be at most {FLOAT32_MAX:.4g} (float32's largest), got {text}")
        return value

    return parse


def check_output_file(path: Path, flag: str, example: str = "lenet5.pt") -> None:
    """Fail before any work when a file could not be written at `path` (a directory there, a device
    or a pipe there, no folder)."""
    path = resolve_output(path, flag)  # a symlink is written through: its target gets the new file
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file name, e.g. {path / example}")
    refuse_special_file(path, flag)
    check_output_dir(path.parent, f"the folder of {flag}")


def resolve_output(path: Path, flag: str) -> Path:
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as err:  # a symlink loop
        raise UserError(f"{flag} {path}: cannot be resolved ({err}); give a plain file name") from None


def refuse_special_file(path: Path, flag: str) -> None:
    """A rename over a device node or a pipe (/dev/null, say) would replace it with a plain file."""
    if path.exists() and not path.is_file():
        raise UserError(f"{flag}: {path} is not a regular file (a device, a pipe or a socket); give a file name")


def check_output_dir(directory: Path, flag: str, files: tuple[str, ...] = ()) -> None:
    """Create `directory` now, so that an unusable one fails before a long run, not after it; the
    `files` that will be written into it must not be devices or pipes there."""
    directory = Path(directory)
    for name in files:
        refuse_special_file(resolve_output(directory / name, flag), flag)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{flag} {directory} is a file, not a folder; choose another location")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{flag}: cannot create {directory}: {err.strerror or err}; choose another location") from None
    if not os.access(directory, os.W_OK):
        raise UserError(f"{flag}: cannot write into {directory}: permission denied; choose another location")


class _SurvivesClosedPipe(io.TextIOBase):
    """sys.stdout/stderr that drop their output once the reader has gone (`| head`, `| grep -m1`)
    instead of raising: the run goes on and writes its files, so no finished work is lost."""

    def __init__(self, stream):
        self.stream, self.gone = stream, False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                self.stream.write(text)
            except BrokenPipeError:
                self._reader_gone()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._reader_gone()

    def _reader_gone(self) -> None:
        self.gone = True
        with contextlib.suppress(OSError, ValueError):  # later flushes (also at exit) go nowhere
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())

    def isatty(self) -> bool:
        return not self.gone and self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()


def run_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """Run an entry point: user errors become one line on stderr and exit status 2, no traceback;
    Ctrl-C exits 130; a closed stdout only silences the output."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # undo the import-time guard of the entry points
    signal.signal(signal.SIGTERM, _terminate)
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _SurvivesClosedPipe(sys.stdout), _SurvivesClosedPipe(sys.stderr)
    rank = os.environ.get("RANK")  # set by torchrun
    speaks = rank in (None, "0")
    where = f"rank {rank}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""  # which process of a job
    try:
        main(argv)
    except UserError as err:  # one that all processes raised alike is reported once; any other, where it arose
        if speaks or not err.everywhere:
            print(f"error: {'' if err.everywhere else where}{err}", file=sys.stderr)
        sys.exit(2)
    except torch.OutOfMemoryError:
        print(f"error: {where}out of memory on the device; use a smaller --batch-size or --device cpu", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # training saves its own state before this is reached
        if speaks:
            print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        sys.stdout.flush()
        sys.stdout, sys.stderr = saved


def _terminate(signum: int, frame) -> None:
    """SIGTERM (`kill`, a scheduler's preemption, torchrun stopping its workers) stops like a Ctrl-C."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (or SIGTERM) until the block is done, so that a save is never abandoned half-way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _: received.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if received:
        raise KeyboardInterrupt


# --- device and memory layout -------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU; an unavailable explicit choice is a UserError."""
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
    }
    if name == "auto":
        name = "cuda" if available["cuda"] else "mps" if available["mps"] else "cpu"
    if not available.get(name, False):
        raise UserError(f"--device {name} is not available on this machine; use --device cpu or auto")
    return torch.device(name)


def place_model(model: nn.Module, device: torch.device | str) -> nn.Module:
    return model.to(device, memory_format=MEMORY_FORMAT)


def place_batch(images: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    return images.to(device, non_blocking=True).contiguous(memory_format=MEMORY_FORMAT)


# --- atomic files -------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path` (with the
    usual permissions), otherwise it is deleted. Readers never see half a file."""
    path = resolve_output(path, "cannot write")  # through a symlink, as check_output_file says
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a directory; choose a file name")
    refuse_special_file(path, "cannot write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}; choose another location") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
        _sync(tmp)  # the bytes reach the disk before the new name does, or a power cut could leave an empty file
        os.replace(tmp, path)
        _sync(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def write_json(obj: Any, path: Path) -> None:
    """Strict JSON (NaN is not JSON: write None instead), atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")


# --- checkpoints --------------------------------------------------------------------------------


def save_checkpoint(
    path: Path,
    config: dict[str, Any],
    training: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Save LeNet5 weights with everything needed to rebuild, check and (optionally) resume them.

    training: a train.TrainState.state_dict() (resumable), or just {"model": weights, "epoch": n}.
    Its weights are stored once, as the checkpoint's "state_dict"; the rest becomes "train_state".
    """
    rest = {k: v for k, v in training.items() if k != "model"}
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "architecture": "LeNet5",
        "config": dict(config),
        "state_dict": {k: v.detach().cpu() for k, v in training["model"].items()},
        "epoch": training.get("epoch", 0),
        "normalization": dict(INPUT_NORMALIZATION),
        "metrics": metrics or {},
        "data": data or {},
        "torch_version": str(torch.__version__),
    }
    if set(rest) - {"epoch"}:
        checkpoint["train_state"] = rest
    atomic_torch_save(checkpoint, path)


def save_model(path: Path, model: LeNet5, metrics: dict[str, Any] | None = None) -> None:
    """Weights only (not resumable)."""
    save_checkpoint(path, model.config, {"model": model.state_dict()}, metrics)


def training_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The TrainState.state_dict() that save_checkpoint split up, whole again (weights included)."""
    return {"model": checkpoint["state_dict"], **checkpoint["train_state"]}


def load_checkpoint(path: Path, resumable: bool = False) -> dict[str, Any]:
    """Read a checkpoint safely (weights_only=True: a pickle that would run code is refused) and check it."""
    path = Path(path)
    from weights_formats import claims, read_checkpoint  # here: weights_formats imports this module

    if claims(path):  # a .safetensors file or a hub folder
        return read_checkpoint(path, resumable)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; pass the checkpoint file, e.g. {path / 'lenet5.pt'}")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; train one with `python main.py`, or give the path of one")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing: one line is enough
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable checkpoint: {_why_unreadable(path, err)}") from None
    _check_contents(path, checkpoint)
    if resumable and (checkpoint.get("format") != CHECKPOINT_FORMAT or "train_state" not in checkpoint):
        raise CheckpointError(
            f"{path}: holds no training state of this version to resume from (it can still be evaluated); "
            "start a new run without --resume"
        )
    return checkpoint


def _check_contents(path: Path, checkpoint: Any) -> None:
    weights = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(weights, dict) or not isinstance(checkpoint.get("config"), dict):
        raise CheckpointError(f"{path}: not a checkpoint of this project (no state_dict/config); retrain it")
    if not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path}: its state_dict holds something other than tensors; retrain it")
    if checkpoint.get("format", 1) > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: written by a newer version of this project (format {checkpoint['format']})")
    if checkpoint.get("normalization", INPUT_NORMALIZATION) != INPUT_NORMALIZATION:
        raise CheckpointError(
            f"{path}: trained on inputs normalized as {checkpoint['normalization']}, but this code feeds "
            f"{INPUT_NORMALIZATION}; its predictions would be wrong, so retrain it"
        )
    broken = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise CheckpointError(
            f"{path}: holds NaN or infinite weights ({', '.join(broken)}): the run that wrote it diverged; retrain it"
        )


def _why_unreadable(path: Path, err: Exception) -> str:
    """Tell a pickle that would run code (refused on purpose) from a damaged or foreign file."""
    foreign = _foreign_globals(path)
    if foreign or "Unsupported global" in str(err):
        named = f" ({', '.join(sorted(foreign))})" if foreign else ""
        return f"it contains Python objects that would run code on load{named}; refused for safety"
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "Weights only load failed" in first or "invalid load key" in first or isinstance(err, KeyError):
        first = "the bytes are not a torch.save file"
    elif path.read_bytes()[:2] == b"PK" and not zipfile.is_zipfile(path):
        first = "an incomplete zip archive"
    return f"the file is damaged, truncated or of another kind ({first})"


def _foreign_globals(path: Path) -> set[str]:
    """The callables a well-formed pickle (plain, or inside torch's zip) imports from outside torch."""
    try:
        raw = path.read_bytes()
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                raw = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
        strings, names = [], set()
        with warnings.catch_warnings():  # pickletools warns about escapes in random bytes
            warnings.simplefilter("ignore")
            for op, arg, _ in pickletools.genops(raw):
                if op.name == "GLOBAL":
                    names.add(".".join(arg.split()))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.add(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # not a well-formed pickle: damaged or random bytes
        return set()
    return {n for n in names if n.split(".")[0] not in {"torch", "collections"}}


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[LeNet5, dict[str, Any]]:
    """Rebuild LeNet5 from a checkpoint's config and load its weights; returns (model in eval mode, checkpoint)."""
    checkpoint = load_checkpoint(path)
    if checkpoint.get("architecture", "LeNet5") != "LeNet5":
        raise CheckpointError(f"{path}: holds a {checkpoint['architecture']}, not a LeNet5")
    try:
        model = LeNet5(**checkpoint["config"])
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit LeNet5 ({first})") from None
    return place_model(model, device).eval(), checkpoint
