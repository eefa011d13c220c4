"""Writing files so that nothing is lost: every file the package writes goes through here.

A file (or a set of files, or a folder) is written under a temporary name beside its target, synced
to the disk, and only then renamed over it: a full disk, a Ctrl-C or a killed process leaves what was
there before. A disk that is full, read-only or over a size limit is a UserError naming the file.
A command's outputs are planned before any work (OutputPlan): a file that is there already is replaced
only when it is one this program wrote, of the same kind (checked again at the rename); and one run at a
time writes them.
JSON is written one way: strict, with NaN and infinity (which JSON lacks) as null.
"""

import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.cli import UserError, name_length_problem

try:
    import fcntl  # POSIX: a folder is locked while a pair of files is replaced in it
except ImportError:  # Windows
    fcntl = None


# --- outputs, planned and checked before any work --------------------------------------------------------


def check_output_file(
    path: Path, flag: str, *, kind: "Kind | None", example: str = "lenet5.pt", keep: bool = True
) -> None:
    """Fail before any work when a file could not be written at `path` (a name too long, a directory there, a
    device or a pipe there, no folder), or when a file there is not `kind` written by this program (kind=None:
    only for a file the command opens and adds to, never replaces). keep: see check_output_dir."""
    refuse_long_name(path, flag)
    path = resolve_output(path, flag)  # a symlink is written through: its target gets the new file
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file name, e.g. {path / example}")
    refuse_special_file(path, flag)
    if kind is not None:
        refuse_foreign_file(path, flag, kind)
    check_output_dir(path.parent, f"the folder of {flag}", keep=keep)


def refuse_long_name(path: Path, flag: str) -> None:
    """A name longer than the file system takes (255 bytes, mostly), said with the flag it came from, before
    anything is made: a derived name too (--out's resume file: x.pt becomes x.resume.pt)."""
    problem = name_length_problem(path)
    if problem:
        raise UserError(f"{flag} {problem}")


def resolve_output(path: Path, flag: str) -> Path:
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as err:  # a symlink loop
        raise UserError(f"{flag} {path}: cannot be resolved ({err}); give a plain file name") from None


def kind_of(path: Path) -> str:
    """What is at `path`, in words: "a folder", "a pipe", "a socket", "a device", "a file" (or "nothing")."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "nothing"
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a pipe"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")]  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "a file")


def refuse_special_file(path: Path, flag: str, fix: str = "give a file name") -> None:
    """A rename over a device node or a pipe (/dev/null, say) would replace it with a plain file."""
    if path.exists() and not path.is_file():
        raise UserError(f"{flag}: {path} is not a regular file ({kind_of(path)}); {fix}")


def check_output_dir(directory: Path, flag: str, files: tuple[str, ...] = (), keep: bool = True) -> None:
    """Create `directory` and write a file into it now, so that an unusable one fails before a long run, not
    after it; the `files` that will be written into it must not be devices or pipes there. keep=False: the
    folders created for the check are removed again (the writers create them with the first file), so that a
    run refused or stopped before it writes leaves none behind."""
    directory = Path(directory)
    refuse_long_name(directory, flag)
    for name in files:
        refuse_long_name(directory / name, flag)
        refuse_special_file(resolve_output(directory / name, flag), flag)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{flag} {directory} is a file, not a folder; choose another location")
    created = missing_folders(directory)
    try:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"{flag}: cannot create {directory}: {_reason(err)}; choose another location") from None
        _probe(resolve_output(directory, flag), flag)  # (resolved: mkstemp reads "link/../x" as "x")
    except BaseException:
        _remove_empty(created)
        raise
    if not keep:
        _remove_empty(created)


def _probe(directory: Path, flag: str) -> None:
    """Create and delete a file in `directory`: os.access cannot tell a read-only file system (or a full inode
    table) from a writable folder, and says yes to root everywhere."""
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-test.", suffix=".tmp")
    except OSError as err:
        raise UserError(f"{flag}: cannot write into {directory}: {_reason(err)}; choose another location") from None
    os.close(fd)
    os.unlink(probe)


def _reason(err: OSError) -> str:
    reason = err.strerror or str(err)
    return reason[:1].lower() + reason[1:]  # "Read-only file system" -> "read-only file system"


def missing_folders(*paths: Path) -> list[Path]:
    """The folders at and above `paths` that do not exist yet, deepest first: what making them creates, and what
    _remove_empty (remove_if_empty) takes back when nothing was written into them."""
    missing = {folder for path in map(Path, paths) for folder in (path, *path.parents) if not folder.exists()}
    return sorted(missing, key=lambda folder: -len(folder.parts))


def _remove_empty(folders: list[Path]) -> None:
    """Remove `folders` (deepest first) that are still empty: another process may have written into one meanwhile."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def new_folder(path: Path, flag: str) -> Path:
    """A folder made for this run alone: `path`, or path-2, path-3, ... when another run (started in the same
    second, say) has taken it. Created exclusively, so that two runs never share one."""
    path = Path(path)
    for candidate in (path, *(path.with_name(f"{path.name}-{n}") for n in range(2, 1000))):
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as err:
            raise UserError(f"{flag}: cannot create {candidate}: {_reason(err)}; choose another location") from None
    raise UserError(f"{flag}: {path} and 998 more folders of that name exist; remove some or choose another location")


def remove_if_empty(*folders: Path | None) -> None:
    """Remove `folders` (deepest first) when nothing was written into them (a run refused or stopped before its
    first file)."""
    _remove_empty([Path(folder) for folder in folders if folder is not None])


@dataclass(frozen=True)
class Kind:
    """What an output file is, in words ("a checkpoint"), and how to tell one that this program wrote from a
    file of the user's that only has its name (`ours`: true for the first, never raises)."""

    name: str
    ours: Callable[[Path], bool]


def json_kind(name: str, keys: set[str]) -> Kind:
    """A JSON file of this program's: an object with at least these keys (a summary, a report's metrics)."""
    return Kind(name, lambda path: keys <= (json_object(path) or {}).keys())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def json_object(path: Path, max_bytes: int = 1 << 20) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it holds none (not JSON, not an object, unreadable, or larger
    than a file this program writes): for the `ours` of a Kind."""
    try:
        if os.stat(path).st_size > max_bytes:
            return None
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # (ValueError: also a UnicodeDecodeError)
        return None
    return value if isinstance(value, dict) else None


# What each planned output may replace, for this process's plans: checked again at the rename, so that a file
# of the user's put at an output's name while the command ran is kept as one there at the start is (the plan's
# check alone would have let a long run replace it at its end); and a link put there, or in the place of one of
# its folders, is not written through. By the path as given, made absolute: (the path resolved then, its Kind).
_planned: dict[str, tuple[Path, Kind]] = {}


class OutputPlan:
    """One command's outputs, all known before any work starts: each is checked writable now (its folder
    created and a file written there, then removed again, so that a bad location fails before a long run,
    not after it, and a refused run leaves no empty folder), and none may be another output's file or one
    of the command's inputs: one would silently replace the other.

    Three kinds of output: a file; a folder written whole (replaced with everything in it); a folder written
    into (among whatever else is there). Nothing may lie inside a file or a folder written whole, a file may
    not be where a folder is needed, and no output may be an input, nor a folder written whole hold one.

    A file given its Kind replaces only a file of that kind that this program wrote: anything else there (the
    user's notes, another program's model) is refused, never silently replaced. lock() holds an output for
    this command alone until the plan's `with` block ends (or the process does)."""

    def __init__(self, inputs: dict[str, Path | None] | None = None):
        """inputs: what the command reads, each by what it is ("the checkpoint given as --weights"; None: not given)."""
        self._inputs = {resolve_output(path, what): what for what, path in (inputs or {}).items() if path}
        self._claims: dict[Path, tuple[str, str]] = {}  # resolved path: (what, kind)
        self._locks: list[_Lock] = []
        self._kinds: list[str] = []  # this plan's entries in _planned

    def __enter__(self) -> "OutputPlan":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def file(self, path: Path, flag: str, *, kind: Kind | None, example: str = "lenet5.pt") -> Path:
        """A file the command writes; kind: what it is, for a file already there may be replaced only if it is
        one this program wrote of that kind (None: see check_output_file)."""
        self._claim(path, flag, "file")
        check_output_file(path, flag, kind=kind, example=example, keep=False)
        self._expect(path, kind)
        return Path(path)

    def _expect(self, path: Path, kind: Kind | None) -> None:
        if kind is not None:
            key = os.path.abspath(path)
            _planned[key] = resolve_output(path, "--out"), kind
            self._kinds.append(key)

    def lock(self, path: Path, flag: str = "--out") -> None:
        """Hold `path` for this command alone until release(): a second command that would write it (a second
        run with the same --out) is refused at its start, rather than both ending well with a mix of their files
        left behind. The system drops the lock of a process that dies (kill -9): none is ever stale."""
        lock = _Lock.take(resolve_output(path, flag))
        if lock is not None:
            if lock.holder is not None:
                pid = f" (pid {lock.holder})" if lock.holder else ""
                raise UserError(f"another run{pid} is writing {path}; wait for it or choose another {flag}")
            self._locks.append(lock)

    def release(self) -> None:
        """Let the outputs go (lock()): the plan's `with` block does it on every way out."""
        while self._locks:
            self._locks.pop().release()
        while self._kinds:
            _planned.pop(self._kinds.pop(), None)

    def folder(self, directory: Path, flag: str, files: dict[str, Kind] | None = None) -> Path:
        """A folder the command writes `files` into, among whatever else is there; each file's Kind says which
        file already there it may replace (its own earlier one), as for file()."""
        files = files or {}
        self._claim(directory, flag, "into")
        for name in files:
            self._claim(Path(directory) / name, f"{flag}'s {name}", "file")
        check_output_dir(directory, flag, tuple(files), keep=False)
        for name, kind in files.items():
            refuse_foreign_file(Path(directory) / name, f"{flag}'s {name}", kind, flag)
            self._expect(Path(directory) / name, kind)
        return Path(directory)

    def whole_folder(self, directory: Path, flag: str, kind: Kind | None = None) -> Path:
        """A folder the command writes whole (it replaces one that holds its own earlier output; kind: what a folder
        there may be to be replaced, checked again when it is, as for file())."""
        self._claim(directory, flag, "whole")
        self._expect(directory, kind)
        return Path(directory)

    def _claim(self, path: Path, what: str, kind: str) -> None:
        key = resolve_output(path, what)
        for source, reads in self._inputs.items():
            if source == key:
                raise UserError(f"{what} {path} is {reads}, which this command reads; choose another name")
            if kind == "whole" and key in source.parents:
                raise UserError(f"{what} {path} and {reads} ({source}), which this command reads, overlap, one inside "
                                "the other; separate them")  # fmt: skip
        for other, (owner, other_kind) in self._claims.items():
            if other == key and {kind, other_kind} not in ({"into"}, {"into", "whole"}):
                raise UserError(
                    f"{what} {path} is also {owner}: one would replace the other; give them different names"
                )
            if _inside(key, other, other_kind) or _inside(other, key, kind):
                raise UserError(f"{what} {path} and {owner} ({other}) overlap, one inside the other; separate them")
        if key not in self._claims or kind == "whole":  # (a folder written whole is also written into)
            self._claims[key] = (what, kind)


def _inside(inner: Path, outer: Path, outer_kind: str) -> bool:
    """Whether `inner` lies in `outer` where nothing may: in a file, or in a folder written whole."""
    return outer_kind in ("file", "whole") and outer in inner.parents


def refuse_foreign_file(path: Path, flag: str, kind: Kind, choose: str = "--out") -> None:
    """A file at `path` that is not `kind` written by this program is the user's: it is never replaced."""
    target = resolve_output(path, flag)
    if target.is_file() and not kind.ours(target):
        raise UserError(f"{flag} {path} exists and is not {kind.name} this program wrote; move it or choose "
                        f"another {choose}")  # fmt: skip


class _Lock:
    """An exclusive flock on a file beside an output (.<name>.lock), the file removed when the lock is let go."""

    def __init__(self, fd: int, path: Path, created: list[Path], holder: int | None = None):
        self.fd, self.path, self.created = fd, path, created
        self.holder = holder  # another process holds it: its pid (0: unknown); None: this one does

    @classmethod
    def take(cls, target: Path, wait: bool = False) -> "_Lock | None":
        """The lock for `target`: this process's, or (holder set) another's; None where files cannot be locked.
        wait: until the other holder lets it go (processes that share `target` and take turns with it)."""
        if fcntl is None:
            return None
        path = target.with_name(_temp_prefix(target) + "lock")
        _refuse_foreign_lock(path, target)
        created = missing_folders(target.parent)
        while True:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            except OSError:  # (check_output_file has said what is wrong with the folder)
                _remove_empty(created)
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                return cls(-1, path, [], holder)
            except OSError:  # a file system without locks (some network ones): unlocked, as before
                os.close(fd)
                with contextlib.suppress(OSError):
                    path.unlink()
                _remove_empty(created)
                return None
            if _same_file(fd, path):  # (not a file its last holder removed as this one opened it)
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as err:  # a full disk, or a file-size limit (ulimit -f): the run could save nothing either
            cls(fd, path, created).release()
            raise UserError(f"cannot write into {path.parent}: {_reason(err)}; free some space or choose another "
                            "location") from None  # fmt: skip
        return cls(fd, path, created)

    def release(self) -> None:
        if self.holder is not None:
            return
        with contextlib.suppress(OSError):
            if _same_file(self.fd, self.path):
                self.path.unlink()  # while still held: a process waiting on it then sees it gone and tries again
        os.close(self.fd)
        _remove_empty(self.created)  # (the folders made for it, unless the run wrote into them)


@contextlib.contextmanager
def turn(target: Path) -> Iterator[None]:
    """Processes that share `target` (workers adding to one study's SQLite file) take turns: each waits here for
    the others; the lock file beside it (.<name>.lock) is gone once nobody holds it. Where files cannot be locked,
    no turns are taken."""
    lock = _Lock.take(target, wait=True)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _refuse_foreign_lock(path: Path, target: Path) -> None:
    """The lock file's name taken by something this program did not make (a folder, a link, a file holding more
    than a pid): it is neither used (the lock would not hold) nor removed (it is the user's)."""
    try:
        mode = os.lstat(path).st_mode
        text = None
        if stat.S_ISREG(mode) and os.stat(path).st_size <= 32:
            text = path.read_bytes()
    except OSError:
        return  # nothing there (or unreadable: the open says so)
    if text is None or not re.fullmatch(rb"(\d+\n)?", text):
        what = "a link" if stat.S_ISLNK(mode) else kind_of(path)
        raise UserError(f"{path} ({what}) is in the way of the lock that keeps two runs from writing {target.name} "
                        "at once, and is not one this program made; move it")  # fmt: skip


def _read_pid(fd: int) -> int:
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return 0
    return int(text) if text.isdigit() else 0


def _same_file(fd: int, path: Path) -> bool:
    try:
        opened, named = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino)


TEMP_NAME_BYTES = 200  # of the target's name, in the temporary and lock files beside it: within 255 with their marks


def cut_name(name: str, max_bytes: int) -> str:
    """`name` cut to its first max_bytes bytes (as the file system counts them), for a name built from it that must
    stay within a file system's 255 bytes."""
    return os.fsdecode(os.fsencode(name)[:max_bytes])


def _temp_prefix(path: Path) -> str:
    """The ".<name>." of the temporary files and folders beside `path` (mkstemp adds 8 characters and a suffix), its
    name cut so that theirs stays within a file system's 255 bytes."""
    return f".{cut_name(path.name, TEMP_NAME_BYTES)}."


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
    created = missing_folders(*(target.parent for target in targets))
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
            for path, target in zip(paths, targets):
                _refuse_newcomer(path, target)
            for tmp, target in zip(temps, targets):
                os.replace(tmp, target)
        for directory in folders:
            _sync(directory)
    except BaseException as err:
        for tmp in temps:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        _remove_empty(created)  # a failed write leaves no empty folder behind either
        if isinstance(err, OSError | WriteError):  # (a WriteError: a writer's own, a figure written atomically itself)
            raise WriteError(targets, err.cause if isinstance(err, WriteError) else err.strerror or str(err)) from None
        if isinstance(err, UserError):  # name the targets, not their temporary files
            message = str(err)
            for tmp, target in zip(temps, targets):
                message = message.replace(str(tmp), str(target))
            raise type(err)(message) from None
        raise


def _refuse_newcomer(path: Path, began: Path, folder: bool = False) -> None:
    """A planned output's name taken, since the plan's check, by a file (or, folder=True, a folder) this program
    did not write, or by a link (`began`: where `path` led when the write began; unplanned, that is what it must
    still lead to): it is kept, and nothing is written through it."""
    resolved, kind = _planned.get(os.path.abspath(path), (began, None))
    target = resolve_output(path, "cannot write")  # where it leads now
    if target != resolved:
        link = _deepest_link(Path(os.path.abspath(path)))
        raise UserError(f"{link} became a link to {resolve_output(link, str(link))} while this command ran: nothing "
                        f"was written through it (to {target}); remove the link")  # fmt: skip
    there = target.is_dir() if folder else target.is_file()
    if kind is not None and there and not kind.ours(target):
        raise UserError(f"{target} was put there or changed while this command ran, and is not {kind.name} this "
                        "program wrote: it is kept, and nothing was written in its place; move it")  # fmt: skip


def _deepest_link(path: Path) -> Path:
    """The link nearest to `path` on its way (itself, or the folder that became one)."""
    return next((step for step in (path, *path.parents) if step.is_symlink()), path)


def _refuse_file_for_folder(path: Path) -> None:
    """A file in the place of a folder `path` is in: mkdir would say only "File exists"."""
    if any(folder.exists() and not folder.is_dir() for folder in path.parents):
        raise UserError(f"cannot write {path}: a file is in the place of its folder; move that file")


class WriteError(UserError):
    """Files that could not be written (a disk full, read-only or over a size limit), left as they were."""

    def __init__(self, targets: list[Path], cause: str):
        self.cause = cause
        super().__init__(f"cannot write {_names(targets)}: {cause}; what was there before is unchanged")


def _names(paths: list[Path]) -> str:
    """Files in words: "a and b"; three or more in one folder: "a, b and c in folder"."""
    if len(paths) > 2 and len({path.parent for path in paths}) == 1:
        names = [path.name for path in paths]
        return f"{', '.join(names[:-1])} and {names[-1]} in {paths[0].parent}"
    return " and ".join(str(path) for path in paths)


@contextlib.contextmanager
def atomic_folder(path: Path, holds: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield an empty folder beside `path`; when the block succeeds it takes `path`'s place (a previous
    folder there is moved aside first, then deleted), otherwise it is deleted. Never half a folder.
    holds: the names of the files the block writes (a killed writer's leftover holds no others)."""
    given, path = Path(path), resolve_output(path, "--out")
    _refuse_file_for_folder(path)
    created = missing_folders(path.parent)  # removed again if the block fails
    old = tmp = None
    held = contextlib.ExitStack()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp"))
        held.enter_context(_in_use(tmp))  # until it is renamed or removed: no later run takes it for a leftover
        (tmp / STAGING_MARK).touch()  # (only a folder with it is ever swept as a killed writer's leftover)
        _remove_stale_temps(path, holds)
        yield tmp
        (tmp / STAGING_MARK).unlink()
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700 folders
        _refuse_newcomer(given, path, folder=True)
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".old"))
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
        held.close()
        if old is not None and old.exists():
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _in_use(folder: Path) -> Iterator[None]:
    """An exclusive flock on `folder` for the block: the mark of a live writer (a killed process's lock is gone)."""
    with contextlib.ExitStack() as held:
        with contextlib.suppress(OSError):  # (no lock where folders cannot be locked: no sweeping there either)
            fd = os.open(folder, os.O_RDONLY)
            held.callback(os.close, fd)
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield


def _remove_stale_temps(path: Path, holds: tuple[str, ...]) -> None:
    """Remove the temporary folders beside `path` that atomic_folder made for it in a process that was killed
    (SIGKILL, a power cut): named .<name>.XXXXXXXX.tmp as mkdtemp names them, holding only files of the names it
    writes (`holds`, or their temporary files), and no live writer's lock on them. Any other is the user's."""
    if fcntl is None:  # (where folders cannot be locked, a live writer's folder cannot be told from a leftover)
        return
    prefix = _temp_prefix(path)
    for entry in os.scandir(path.parent):
        shape = entry.name.startswith(prefix) and entry.name.endswith(".tmp") and len(entry.name) == len(prefix) + 12
        if not (shape and entry.is_dir(follow_symlinks=False) and _holds_only(Path(entry.path), holds)):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError: a live writer holds it
            shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            pass
        finally:
            os.close(fd)


STAGING_MARK = ".atomic_folder-staging"  # in a folder atomic_folder is filling, until it takes its place


def _holds_only(folder: Path, names: tuple[str, ...]) -> bool:
    """Whether `folder` is one atomic_folder was filling: its mark, and nothing but files named `names` (or their
    temporary files, .<name>.XXXXXXXX.tmp)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    temps = tuple(_temp_prefix(Path(name)) for name in names)
    return any(entry.name == STAGING_MARK for entry in entries) and all(
        entry.is_file(follow_symlinks=False)
        and (entry.name in (*names, STAGING_MARK) or (entry.name.startswith(temps) and entry.name.endswith(".tmp")))
        for entry in entries
    )


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
    try:
        _refuse_file_for_folder(path)
        if path.is_dir():
            raise UserError(f"cannot write {path}: it is a directory; choose a file name")
        refuse_special_file(path, "cannot write")
    except OSError as err:  # a name too long, say: a UserError like a failed write, whose callers catch them
        raise WriteError([path], err.strerror or str(err)) from None
    return path


def _new_temp_beside(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
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
