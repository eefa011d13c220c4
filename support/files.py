"""Writing files so that nothing is lost: every file the package writes goes through here.

A file (or a set of files, or a folder) is written under a temporary name beside its target, synced
to the disk, and only then renamed over it: a full disk, a Ctrl-C or a killed process leaves what was
there before. A disk that is full, read-only or over a size limit is a UserError naming the file.
JSON is written one way: strict, with NaN and infinity (which JSON lacks) as null.
"""

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from support.cli import UserError

try:
    import fcntl  # POSIX: a folder is locked while a pair of files is replaced in it
except ImportError:  # Windows
    fcntl = None


# --- outputs, planned and checked before any work --------------------------------------------------------


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


class OutputPlan:
    """One command's outputs, all known before any work starts: each is checked writable now (its folder
    created, so that a bad location fails before a long run, not after it), and none may be another
    output's file or one of the command's inputs: one would silently replace the other."""

    def __init__(self, inputs: dict[str, Path | None] | None = None):
        """inputs: what the command reads, each by what it is ("the checkpoint given as --weights"; None: not given)."""
        self._inputs = {resolve_output(path, what): what for what, path in (inputs or {}).items() if path}
        self._outputs: dict[Path, str] = {}

    def file(self, path: Path, flag: str, example: str = "lenet5.pt") -> Path:
        check_output_file(path, flag, example)
        self._claim(path, flag)
        return Path(path)

    def folder(self, directory: Path, flag: str, files: tuple[str, ...] = ()) -> Path:
        """A folder the command writes `files` into, among whatever else is there."""
        check_output_dir(directory, flag, files)
        for name in files:
            self._claim(Path(directory) / name, f"{flag}'s {name}")
        return Path(directory)

    def whole_folder(self, directory: Path, flag: str) -> Path:
        """A folder the command writes whole (it replaces one that holds its own earlier output)."""
        self._claim(directory, flag)
        return Path(directory)

    def _claim(self, path: Path, what: str) -> None:
        key = resolve_output(path, what)
        if key in self._inputs:
            raise UserError(f"{what} {path} is {self._inputs[key]}, which this command reads; choose another name")
        if key in self._outputs:
            raise UserError(f"{what} {path} is also {self._outputs[key]}: one would replace the other; "
                            "give them different names")  # fmt: skip
        for other, owner in self._outputs.items():  # a folder written whole, and a file inside it (or the reverse)
            if other in key.parents or key in other.parents:
                raise UserError(f"{what} {path} and {owner} ({other}) overlap, one inside the other; separate them")
        self._outputs[key] = what


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
            os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600 files
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
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yield an empty folder beside `path`; when the block succeeds it takes `path`'s place (a previous
    folder there is moved aside first, then deleted), otherwise it is deleted. Never half a folder."""
    path = resolve_output(path, "--out")
    created = [f for f in path.parents if not f.exists()]  # removed again if the block fails
    old = tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        yield tmp
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700 folders
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old)  # (an empty folder is replaced by a rename)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not path.exists():
            os.replace(old, path)
        for unused in created:
            with contextlib.suppress(OSError):  # (one another process has written into meanwhile stays)
                unused.rmdir()
        if isinstance(err, OSError):
            raise UserError(f"cannot write {path}: {err.strerror or err}; what was there before is unchanged") from None
        if isinstance(err, UserError) and tmp is not None:  # (a full disk): name the folder asked for
            raise type(err)(str(err).replace(str(tmp), str(path))) from None
        raise
    finally:
        if old is not None and old.exists():
            shutil.rmtree(old, ignore_errors=True)


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


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(data: bytes, path: Path) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def torch_bytes(obj: Any) -> bytes:
    """torch.save into memory first: a full disk then fails in Python's own write, with its errno,
    instead of deep inside torch's writer ("basic_ios::clear: iostream error")."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def atomic_torch_save(obj: Any, path: Path) -> None:
    write_bytes(torch_bytes(obj), path)


# --- JSON: one policy ---------------------------------------------------------------------------


def json_text(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON: NaN and infinity, which JSON lacks, become null; anything else that JSON cannot hold
    (a Path, say) becomes its text."""
    return json.dumps(without_nan(obj), indent=indent, allow_nan=False, default=str) + ("\n" if indent else "")


def without_nan(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [without_nan(item) for item in value]
    return value


def write_json(obj: Any, path: Path) -> None:
    write_bytes(json_text(obj).encode(), path)
