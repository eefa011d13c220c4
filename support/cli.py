"""The command-line contract every entry point shares: flags, errors, exit statuses, output paths, Ctrl-C.

It imports neither torch nor the model, so that any module can raise a UserError cheaply, and so
that importing it first (pyproject.toml's isort section puts it before the third-party imports)
arms the start-up guard before torch takes its seconds to load.

Exit statuses, the same for every entry point (and the README's table):
      0  done
      1  some inputs failed, the others were processed (predict.py: an unreadable image); or, under
         torchrun, another process of the job failed (the finished epochs are saved)
      2  user error: one line on stderr says what is wrong and how to fix it
    130  stopped by a signal (Ctrl-C, SIGTERM, SIGHUP, SIGQUIT); training saves a resumable checkpoint first
"""

import argparse
import atexit
import contextlib
import errno
import io
import math
import os
import re
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from support import signals

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = signals.EXIT_INTERRUPTED

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = PROJECT_DIR / "checkpoints" / "lenet5.pt"  # what main.py writes and the others read
DEFAULT_REPORT_DIR = PROJECT_DIR / "reports"
DEVICES = ("auto", "cpu", "cuda", "mps", "xpu")
FLOAT32_MAX = 3.4028234663852886e38  # training runs in float32: a larger value would overflow there
FLOAT32_TINY = 1.401298464324817e-45  # float32's smallest positive value (subnormal): below about half of it is 0


def _one_line_while_starting(kind: type, error: BaseException, traceback) -> None:
    """An entry point that cannot even load its libraries (torch under `ulimit -v`, a broken install)."""
    if issubclass(kind, (ImportError, MemoryError, OSError)):
        first = (str(error).strip().splitlines() or [kind.__name__])[0]
        print(
            f"error: cannot load the libraries this program needs ({kind.__name__}: {first}); is there enough "
            "memory (`ulimit -v`), and was `pip install -r requirements.txt` run in this environment?",
            file=sys.stderr,
            flush=True,
        )
        os._exit(EXIT_USER_ERROR)
    sys.__excepthook__(kind, error, traceback)


def _is_program() -> bool:
    """Whether one of this project's files is the program this process runs (not pytest, not a library user; a
    virtual environment inside the project folder holds no program of its own)."""
    program = getattr(sys.modules.get("__main__"), "__file__", None)
    if not program or threading.current_thread() is not threading.main_thread():
        return False
    path = Path(program).resolve()
    return PROJECT_DIR in path.parents and not path.is_relative_to(Path(sys.prefix).resolve())


def _guard_start_up() -> None:
    """While an entry point is still importing torch: a stop signal ends it with 130, and a library that
    cannot load is one line with 2, neither with a traceback; run_cli() puts the usual handlers back
    once the entry point runs. Only when one of this project's files is the program (not under
    pytest, not when imported as a library)."""
    if _is_program():
        signals.exit_at_once()  # (run_cli() then makes them a KeyboardInterrupt, which training saves on)
        sys.excepthook = _one_line_while_starting


_guard_start_up()


class UserError(Exception):
    """A mistake the user can fix (missing file, bad flag, wrong checkpoint): one line, exit 2."""

    everywhere = False  # under torchrun: True when every process raises it alike (then rank 0 alone reports it)


# --- the parser and the shared flags ------------------------------------------------------------


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring printed as written; a flag's default shown only when it says something."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        meaningless = action.default in (None, False, argparse.SUPPRESS) or action.option_strings == []
        if "(default:" in text or meaningless or isinstance(action, argparse._HelpAction):
            return text
        return f"{text} (default: %(default)s)"


def _program_name() -> str | None:
    """`python -m scripts.NAME` for a script run as a module (argparse would say NAME.py); else argparse's own."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return f"python -m {spec.name}" if spec is not None and spec.name.startswith("scripts.") else None


class CliParser(argparse.ArgumentParser):
    """argparse with the project's conventions: meaningful defaults in --help, one-line errors (exit 2)."""

    def __init__(self, description: str | None = None, **kwargs):
        # allow_abbrev=False: `--res X` is not silently taken for --resume (or --out for --out-dir)
        kwargs.setdefault("prog", _program_name())
        super().__init__(description=description, formatter_class=_HelpFormatter, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        # Under torchrun every process parses the same flags: rank 0 alone says what is wrong with them.
        text = f"{self.prog}: error: {one_line(message)} (see --help)\n"
        self.exit(EXIT_USER_ERROR, text if speaks() else None)

    def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:
        # An empty value is never meant: `--out "$OUT"` with OUT unset. As a path it is the current folder
        # (`--report-dir ''` wrote the report into it, `predict.py ''` read every image there), so every flag
        # and positional of every command refuses it, before its type sees it.
        if "" in arg_strings and action.nargs not in (argparse.PARSER, argparse.REMAINDER):
            wanted = "a path" if action.type in (Path, output_file) else "a value"
            raise argparse.ArgumentError(action, f"an empty value (an unset shell variable?); give {wanted}")
        return super()._get_values(action, arg_strings)


def output_file(text: str) -> Path:
    """An argparse type for a file the command writes. A name that ends in a separator, '.' or '..' names a
    folder, which Path would silently turn into a file of that folder's name (`--out runs/x/` wrote runs/x)."""
    if text.replace(os.sep, "/").rsplit("/", 1)[-1] in ("", ".", ".."):
        raise argparse.ArgumentTypeError(f"{text!r} names a folder; give the name of a file in it")
    return through_link(text)


def through_link(text: str) -> Path:
    """An argparse type for a file named by a symlink: its target's name is taken now, so that the files named
    after it (x.json, x.resume.pt; x.pt for a resume file) sit beside the file they describe, not beside the link."""
    path = Path(text)
    if not path.is_symlink():
        return path
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # a symlink loop: the output plan's check says so, with the flag's name
        return path


def add_device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        choices=DEVICES,
        help="where the model runs; auto: the accelerator torch finds, else the CPU",
    )


def add_weights_flag(
    p: argparse.ArgumentParser, help: str = "the checkpoint to read (a .pt written by main.py)"
) -> None:
    p.add_argument("--weights", type=Path, default=DEFAULT_CHECKPOINT, help=help)


def add_report_dir_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--report-dir", type=Path, default=DEFAULT_REPORT_DIR, help="folder for metrics.json and the figures"
    )


def add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout instead of text")


def add_limit_flag(p: argparse.ArgumentParser, **kwargs) -> None:
    """--limit N: the same meaning in every entry point (main.py passes default=argparse.SUPPRESS)."""
    help = "use only the first N images of each MNIST split the command reads (default: all)"
    p.add_argument("--limit", type=number(int, 1), help=help, **kwargs)


# Plain ASCII decimal numbers only: Python's int() and float() would also take "1_000" and other
# scripts' digits ("١٢"), while hex is refused; one rule is easier to say and to trust.
_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)


def number(kind: type = int, low: float | None = None, high: float | None = None, low_open: bool = False):
    """An argparse type: a finite int or float, written in plain decimal, in [low, high] ((low, high] with low_open)."""
    noun = "an integer" if kind is int else "a finite number"
    lower = "" if low is None else f"> {low}" if low_open else f">= {low}"
    bounds = " and ".join(part for part in (lower, "" if high is None else f"<= {high}") if part)
    syntax = _INTEGER if kind is int else _DECIMAL

    def parse(text: str):
        if not syntax.fullmatch(text.strip()):
            raise argparse.ArgumentTypeError(f"must be {noun} {bounds}, written in decimal digits, got {text!r}")
        value = kind(text)
        too_low = low is not None and (value <= low if low_open else value < low)
        if (kind is float and not math.isfinite(value)) or too_low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {noun} {bounds}, got {text}")
        if kind is float and abs(value) > FLOAT32_MAX:
            raise argparse.ArgumentTypeError(f"must be at most {FLOAT32_MAX:.4g} (float32's largest), got {text}")
        if kind is float and low_open and low is not None and _as_float32(value) <= low:
            raise argparse.ArgumentTypeError(  # 1e-50 > 0, but it is 0 in float32, where training computes
                f"must be {noun} {bounds} in float32 (training's precision), where {text} is "
                f"{_as_float32(value):g}; the smallest positive float32 is {FLOAT32_TINY:.4g}"
            )
        return value

    return parse


def _as_float32(value: float) -> float:
    """`value` as float32 holds it (rounded to the nearest; a tiny one to 0)."""
    return struct.unpack("f", struct.pack("f", value))[0]


# --- file names -----------------------------------------------------------------------------------

NAME_MAX = 255  # bytes in one name of a path, on Linux, macOS and Windows file systems alike
PATH_MAX = 4096  # bytes in a whole path, on Linux


def name_max(path: Path) -> int:
    """The longest name the file system under `path` takes (the nearest folder that exists says), in bytes."""
    for folder in Path(path).parents:
        if os.path.isdir(folder):  # (os.path: False, never an OSError, for a path too long to look at)
            with contextlib.suppress(OSError, ValueError):
                return os.pathconf(folder, "PC_NAME_MAX")
            break
    return NAME_MAX


def name_length_problem(path: str | Path) -> str | None:
    """Why `path` cannot be a file's path because of its length (one of its names, or the whole), in words that
    start with the path; None when its length is fine."""
    path = Path(os.fsdecode(path))
    limit, parts = name_max(path), path.parts or ("",)
    longest = max(parts, key=lambda part: len(os.fsencode(part)))
    size = len(os.fsencode(longest))
    if size > limit:
        which = "its name" if longest == parts[-1] else f"the folder name {longest[:12]}...{longest[-12:]} in it"
        return f"{path}: {which} is {size} bytes long, and the file system takes at most {limit}; choose a shorter one"
    if len(os.fsencode(str(path))) >= PATH_MAX:
        return f"{path}: the path is {len(os.fsencode(str(path)))} bytes long, more than the system takes; shorten it"
    return None


# --- which process speaks --------------------------------------------------------------------------


def torchrun_rank() -> int | None:
    """This process's rank when torchrun started it (torchrun sets TORCHELASTIC_RUN_ID, RANK and WORLD_SIZE in
    each worker), else None: a RANK left in the environment of a plain `python` means nothing here."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return None


def speaks() -> bool:
    """Whether this process prints: any plain process, and rank 0 of a torchrun job (the others say only
    what is theirs alone)."""
    return torchrun_rank() in (None, 0)


def who() -> str:
    """'rank N: ' in a torchrun job of several processes, else '': which process an error comes from."""
    rank = torchrun_rank()
    return f"rank {rank}: " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""


# --- running an entry point -----------------------------------------------------------------------


class _SurvivesClosedPipe(io.TextIOBase):
    """sys.stdout/stderr that drop their output once it cannot be written (the reader has gone:
    `| head`, `| grep -m1`; a full device: `> /dev/full`; no stream at all: `>&-`) instead of raising:
    the run goes on and writes its files, so no finished work is lost. `failure` keeps why, unless the
    reader simply stopped reading (it had what it wanted)."""

    def __init__(self, stream):
        self.stream, self.gone = stream, stream is None
        self.failure: str | None = "it is closed" if stream is None else None

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                self.stream.write(text)
            except OSError as err:
                self._reader_gone(err)
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream.flush()
            except OSError as err:
                self._reader_gone(err)

    def _reader_gone(self, err: OSError) -> None:
        self.gone = True
        if not isinstance(err, BrokenPipeError):
            self.failure = err.strerror or str(err)
        with contextlib.suppress(OSError, ValueError):  # later flushes (also at exit) go nowhere
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())

    def isatty(self) -> bool:
        return not self.gone and self.stream.isatty()

    def fileno(self) -> int:
        if self.stream is None:
            raise io.UnsupportedOperation("no stream: it was closed when the program started")
        return self.stream.fileno()


def print_results(text: str) -> None:
    """Print what the command was asked for on stdout (its --json: the product itself, which nothing else
    keeps), and make sure it arrived: when it cannot be written there (a full disk, a closed stdout) a
    UserError says so, rather than a success with the results lost. A reader that stopped reading early
    (`| head -c 100`) took what it wanted: that is no error."""
    print(text, end="" if text.endswith("\n") else "\n")
    results_arrived()


def results_arrived() -> None:
    """Raise a UserError when what was printed as the results could not be written to stdout (print_results)."""
    sys.stdout.flush()
    failure = getattr(sys.stdout, "failure", None)
    if failure:
        raise UserError(f"cannot write the results to stdout: {failure}")


def one_line(message: str) -> str:
    """An error stays one line even when it quotes a name holding a line break (a path made by a script, say)."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def _escaping(stream):
    """`stream`, writing what its encoding lacks as escapes (PYTHONIOENCODING=ascii, a C locale: a file named
    "ü.png" is printed as "\\xfc.png" rather than ending the run with a UnicodeEncodeError)."""
    with contextlib.suppress(AttributeError, ValueError, io.UnsupportedOperation):
        stream.reconfigure(errors="backslashreplace")
    return stream


def _exit_status(exit_: SystemExit) -> int:
    """The status `sys.exit(code)` ends a process with (a message instead of a number: 1, the message printed)."""
    return (exit_.code or 0) if exit_.code is None or isinstance(exit_.code, int) else 1


def _interrupted() -> int:
    if speaks():
        print("\ninterrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def broken_library(err: ImportError) -> str | None:
    """The installed library (top-level name) that `err` came from, or None when it came from this project's code."""
    tb, library = err.__traceback__, None
    while tb is not None:  # raised in a library's own code (it is broken): the innermost frame outside the project,
        module = tb.tb_frame.f_globals.get("__name__", "")  # (torch importing a broken onnx: onnx, not torch)
        outside = not Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(PROJECT_DIR)
        if outside and module and not module.startswith("importlib"):
            library = module.split(".")[0]
        tb = tb.tb_next
    top = (err.name or "").split(".")[0]
    return library or (top if top and not _in_project(top) else None)  # or one not installed at all


def _in_project(top: str) -> bool:
    return (PROJECT_DIR / top).is_dir() or (PROJECT_DIR / f"{top}.py").is_file()


def _run(main: Callable[[list[str] | None], Any], argv: list[str] | None) -> int:
    """main(argv) under the contract; returns its exit status (an unexpected exception goes on, with its traceback)."""
    where = who()
    try:
        main(argv)
    except UserError as err:  # one that all processes raised alike is reported once; any other, where it arose
        if speaks() or not err.everywhere:
            print(f"error: {'' if err.everywhere else where}{one_line(str(err))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:  # training saves its own state before this is reached
        return _interrupted()
    except OSError as err:  # a path too long for the system, wherever it is given (an input, a folder, an output)
        if err.errno != errno.ENAMETOOLONG:
            raise
        named = err.filename if err.filename is not None else err.filename2
        problem = named is not None and name_length_problem(named)
        problem = problem or f"{named if named is not None else 'a path'}: too long a name; choose a shorter one"
        print(f"error: {where}{one_line(problem)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ImportError as err:  # a library the package needs is missing or broken: the install is to fix, not the code
        library = broken_library(err)
        if library is None:
            raise
        problem = one_line(f"{type(err).__name__}: {err}")
        print(f"error: {where}cannot import {library} ({problem}); reinstall it: pip install -r requirements.txt",
              file=sys.stderr)  # fmt: skip
        return EXIT_USER_ERROR
    except Exception as err:
        if type(err).__name__ != "OutOfMemoryError":  # torch's, named so that this module need not import torch
            raise
        print(f"error: {where}out of memory on the device; use a smaller --batch-size or --device cpu", file=sys.stderr)
        return EXIT_USER_ERROR
    return EXIT_OK


def run_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """Run an entry point under the exit-status contract: user errors become one line on stderr and
    exit 2, no traceback; a stop signal exits 130; a closed stdout only silences the output.

    When this project's file is the program, the process then ends here (end_process), its signals handled to
    the very last moment; otherwise (the tests, a library user) the status is raised as SystemExit (none for 0)."""
    signals.stop_raises()  # replaces the start-up guard
    sys.excepthook = sys.__excepthook__
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _SurvivesClosedPipe(_escaping(saved[0])), _SurvivesClosedPipe(_escaping(saved[1]))
    exit_ = None
    try:
        code = _run(main, argv)
    except SystemExit as raised:  # main's own sys.exit (argparse's among them)
        exit_, code = raised, _exit_status(raised)
    except KeyboardInterrupt:  # a stop just as main had ended, before the process's end took over the signals
        code = _interrupted()
    except BaseException:
        sys.stdout.flush()
        sys.stdout, sys.stderr = saved
        raise
    if _is_program():
        if exit_ is not None and code == 1 and exit_.code != 1:
            print(exit_.code, file=sys.stderr)  # sys.exit("message"), as Python prints it
        end_process(code)
    sys.stdout.flush()
    sys.stdout, sys.stderr = saved
    if exit_ is not None:
        raise exit_
    if code != EXIT_OK:
        sys.exit(code)


def end_process(code: int) -> NoReturn:
    """End this program with `code` now: its output flushed and what the libraries registered for the exit run
    (matplotlib removes a temporary folder it made, for one), but without the interpreter's teardown. That
    teardown, freeing torch and the other modules one by one, is a wait the user sees after the last line, for
    nothing; Python gives the signals back to the system's defaults in it (a SIGTERM then ends the process with
    143), a stop raised inside a library's exit hook is a traceback, and under torchrun gloo's threads may
    still hold objects whose destruction aborts the process (SIGABRT: "terminate called without an active
    exception"). Here a stop is only noted (130, with its line, instead of 0), a second one ends it at once."""
    ending = signals.Ending("\ninterrupted\n" if speaks() else "")
    _flush_output()
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    if ending.noted and code == EXIT_OK:  # stopped while finishing: said as any stop is
        code = _interrupted()
    _flush_output()
    os._exit(code)


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # (none at all when the program was started with it closed)
            with contextlib.suppress(OSError, ValueError):  # a closed pipe or a full disk: that output is lost already
                stream.flush()
