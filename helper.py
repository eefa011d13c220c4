"""Saving and loading weights: the checkpoint format (written atomically, read back and checked)."""

import contextlib
import hashlib
import io
import json
import os
import pickletools
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cli import UserError, refuse_special_file, resolve_output

import torch

from devices import place_model
from LeNet5 import INPUT_NORMALIZATION, LeNet5

try:
    import fcntl  # POSIX: a folder is locked while a pair of files is replaced in it
except ImportError:  # Windows
    fcntl = None

CHECKPOINT_FORMAT = 3  # 2: train_state carries a data fingerprint and the full recipe; 3: and a digest


class CheckpointError(UserError):
    """A checkpoint that is missing, damaged, unsafe, non-finite or of another architecture."""


# --- atomic files -------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path`. See atomic_outputs."""
    with atomic_outputs(path) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_outputs(*paths: Path) -> Iterator[tuple[Path, ...]]:
    """Yield a temporary path beside each of `paths`. When the block succeeds, every one is synced to
    the disk and only then do they replace their targets, one rename each (with the usual
    permissions): a checkpoint and its .json are replaced together, or neither is. When anything
    fails, the temporary files are deleted and the targets stay as they were; a disk that is full,
    read-only or over a size limit is a UserError naming the file and the cause."""
    targets = [_writable_target(path) for path in paths]
    temps: list[Path] = []
    try:
        for target in targets:
            temps.append(_new_temp_beside(target))
        yield tuple(temps)
        for tmp in temps:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
            _sync(tmp)  # the bytes reach the disk before the new name does, or a power cut could leave an empty file
        folders = {target.parent for target in targets}
        with _one_writer_at_a_time(folders if len(targets) > 1 else set()):  # (one rename is atomic by itself)
            for tmp, target in zip(temps, targets):
                os.replace(tmp, target)
        for directory in folders:
            _sync(directory)
    except BaseException as err:
        for tmp in temps:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            names = " and ".join(str(target) for target in targets)
            raise UserError(
                f"cannot write {names}: {err.strerror or err}; what was there before is unchanged"
            ) from None
        raise


@contextlib.contextmanager
def _one_writer_at_a_time(directories: set[Path]) -> Iterator[None]:
    """Two processes replacing the same pair at once could leave one's checkpoint beside the other's
    .json: an exclusive flock on each folder makes one writer's renames a block (on POSIX; where
    folders cannot be locked, as on Windows or some network file systems, the renames go unlocked)."""
    with contextlib.ExitStack() as held:
        for directory in sorted(directories) if fcntl is not None else []:
            with contextlib.suppress(OSError):  # a folder that cannot be opened or locked
                fd = os.open(directory, os.O_RDONLY)
                held.callback(os.close, fd)  # closing the descriptor releases its lock
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield


def _writable_target(path: Path) -> Path:
    path = resolve_output(path, "cannot write")  # through a symlink, as check_output_file says
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a directory; choose a file name")
    refuse_special_file(path, "cannot write")
    return path


def _new_temp_beside(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


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


def _torch_bytes(obj: Any) -> bytes:
    """torch.save into memory first: a full disk then fails in Python's own write, with its errno,
    instead of deep inside torch's writer ("basic_ios::clear: iostream error")."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def atomic_torch_save(obj: Any, path: Path) -> None:
    data = _torch_bytes(obj)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def json_text(obj: Any) -> str:
    """Strict JSON (NaN is not JSON: write None instead)."""
    return json.dumps(obj, indent=2, allow_nan=False) + "\n"


def write_json(obj: Any, path: Path) -> None:
    text = json_text(obj)
    with atomic_output(path) as tmp:
        tmp.write_text(text)


# --- checkpoints --------------------------------------------------------------------------------


def save_checkpoint(
    path: Path,
    config: dict[str, Any],
    training: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    metrics_json: Path | None = None,
) -> None:
    """Save LeNet5 weights with everything needed to rebuild, check and (optionally) resume them.

    training: a train.TrainState.state_dict() (resumable), or just {"model": weights, "epoch": n}.
    Its weights are stored once, as the checkpoint's "state_dict"; the rest becomes "train_state",
    sealed by a digest that Resume checks. metrics_json: also write the metrics there as JSON,
    replaced together with the checkpoint.
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
        checkpoint["digest"] = state_digest(checkpoint)
    contents = [_torch_bytes(checkpoint)] + ([json_text(metrics or {}).encode()] if metrics_json else [])
    with atomic_outputs(path, *([metrics_json] if metrics_json else [])) as temps:
        for tmp, content in zip(temps, contents):
            tmp.write_bytes(content)


def state_digest(checkpoint: dict[str, Any]) -> str:
    """SHA-256 over what a resume depends on (weights, training state, model config, data fingerprint):
    written at save time, compared on --resume, so a damaged or edited resume file is refused."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"<{tensor.dtype} {tuple(tensor.shape)}>".encode())
            digest.update(tensor.numpy().tobytes())
        elif isinstance(value, dict):
            digest.update(b"{")
            for key in sorted(value, key=repr):
                feed(key)
                feed(value[key])
            digest.update(b"}")
        elif isinstance(value, (list, tuple)):
            digest.update(b"[")
            for item in value:
                feed(item)
            digest.update(b"]")
        else:
            digest.update(f"{type(value).__name__}:{value!r};".encode())

    feed({key: checkpoint.get(key) for key in ("state_dict", "train_state", "config", "data")})
    return digest.hexdigest()


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
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint; train one with `python main.py`, or give the path of one")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file (a device, a pipe or a socket); pass a checkpoint file")
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
    if type(checkpoint.get("format", 1)) is not int:
        raise CheckpointError(f"{path}: its format {checkpoint['format']!r} is not a version number; retrain it")
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
