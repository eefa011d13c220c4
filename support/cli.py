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
import contextlib
import io
import math
import os
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def _guard_start_up() -> None:
    """While an entry point is still importing torch: a stop signal ends it with 130, and a library that
    cannot load is one line with 2, neither with a traceback; run_cli() puts the usual handlers back
    once the entry point runs. Only when one of this project's files is the program (not under
    pytest, not when imported as a library)."""
    program = getattr(sys.modules.get("__main__"), "__file__", None)
    if (
        program
        and PROJECT_DIR in Path(program).resolve().parents
        and threading.current_thread() is threading.main_thread()
    ):
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
        text = f"{self.prog}: error: {message} (see --help)\n"
        self.exit(EXIT_USER_ERROR, text if speaks() else None)


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
        return value

    return parse


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
    the run goes on and writes its files, so no finished work is lost."""

    def __init__(self, stream):
        self.stream, self.gone = stream, stream is None

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                self.stream.write(text)
            except OSError:
                self._reader_gone()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream.flush()
            except OSError:
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
    """Run an entry point under the exit-status contract: user errors become one line on stderr and
    exit 2, no traceback; a stop signal exits 130; a closed stdout only silences the output."""
    signals.stop_raises()  # replaces the start-up guard
    sys.excepthook = sys.__excepthook__
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _SurvivesClosedPipe(sys.stdout), _SurvivesClosedPipe(sys.stderr)
    where = who()
    try:
        main(argv)
    except UserError as err:  # one that all processes raised alike is reported once; any other, where it arose
        if speaks() or not err.everywhere:
            print(f"error: {'' if err.everywhere else where}{err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:  # training saves its own state before this is reached
        if speaks():
            print("\ninterrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as err:
        if type(err).__name__ != "OutOfMemoryError":  # torch's, named so that this module need not import torch
            raise
        print(f"error: {where}out of memory on the device; use a smaller --batch-size or --device cpu", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    finally:
        sys.stdout.flush()
        sys.stdout, sys.stderr = saved
