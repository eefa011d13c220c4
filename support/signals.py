"""Run control: every signal that ends a process by default and that a program can catch, handled one way.

Ctrl-C (SIGINT), SIGTERM (`kill`, a scheduler's preemption, torchrun stopping its workers), SIGHUP (the
terminal closed; not under nohup, which has it ignored) and SIGQUIT (Ctrl-\\) all stop a command the same
orderly way: as a KeyboardInterrupt, which training turns into a saved resume file and the commands into
exit status 130. Each use below installs one handler for all of them, through `_install`, and puts the
previous ones back:

- `stop_raises()`: the usual state while a command runs (cli.run_cli sets it);
- `Noted()`: within a block, a stop is only noted (the end of an epoch; every process of a torchrun job
  until they agree to stop at the same step);
- `deferred()`: within a block, a stop waits until the block is done, then is raised (a file being saved);
- `exit_at_once()`: while a program is still importing its libraries, a stop ends it with 130 at once;
- `ignore_stops()`: the process is on its way out, having saved what it had;
- `Ending()`: the process's last moments (its output flushed, what the libraries registered for the exit run,
  then `os._exit`): a stop is only noted (the exit status then says 130), a second one ends it at once. Never
  an exception there: one raised inside a library's exit hook or a C++ destructor aborts the process.

No torch here: cli.py arms the start-up guard with it before torch is imported.
"""

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator

EXIT_INTERRUPTED = 130
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, name)
)  # (Windows has only the first two)

# `nohup python main.py &` starts the process with SIGHUP ignored, so that closing the terminal does not stop it:
# that choice is kept (the other stop signals are handled whatever they inherit: `kill -INT` stops a job that a
# script started with `&`, which the shell starts with SIGINT ignored).
KEPT_IGNORED = tuple(
    number for number in STOP_SIGNALS if number.name == "SIGHUP" and signal.getsignal(number) == signal.SIG_IGN
)

Handler = Callable[[int, object], object] | int | None


def _install(handler: Handler) -> dict[int, Handler]:
    """Set `handler` for every stop signal (but one ignored on purpose: KEPT_IGNORED); returns the previous ones.
    Only the main thread can set handlers: elsewhere (a server's worker thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {number: signal.signal(number, handler) for number in STOP_SIGNALS if number not in KEPT_IGNORED}


def _restore(previous: dict[int, Handler]) -> None:
    for number, handler in previous.items():
        signal.signal(number, handler)


def _raise_stop(signum: int, frame) -> None:
    raise KeyboardInterrupt


def _exit_now(signum: int, frame) -> None:
    os._exit(EXIT_INTERRUPTED)


def stop_raises() -> None:
    """Any stop signal raises KeyboardInterrupt where the program is, as Ctrl-C does."""
    _install(_raise_stop)


def exit_at_once() -> None:
    """Any stop signal ends the process with 130 at once (nothing has started that could be saved)."""
    _install(_exit_now)


def ignore_stops() -> None:
    """The process is on its way out (saving what it has, then exiting): further stops no longer cut that short."""
    _install(signal.SIG_IGN)


class Noted:
    """Within the block, a stop signal is noted (`noted`, `signum`), not raised; the block always completes."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Handler] = {}

    def __enter__(self) -> "Noted":
        self._previous = _install(self._note)
        return self

    def __exit__(self, *exc) -> None:
        _restore(self._previous)
        self._previous = {}

    def _note(self, signum: int, frame) -> None:
        self.signum = signum

    @property
    def noted(self) -> bool:
        return self.signum is not None


class Ending:
    """Installed for good (the process ends under it): a first stop is noted (`noted`), a second one writes
    `last_words` to stderr and ends the process with 130 at once (a final flush that blocks on a reader who
    stopped reading cannot hold the process)."""

    def __init__(self, last_words: str = "") -> None:
        self.noted = False
        self._last_words = last_words.encode()
        _install(self._stop)

    def _stop(self, signum: int, frame) -> None:
        if not self.noted:
            self.noted = True
            return
        with contextlib.suppress(OSError):
            os.write(2, self._last_words)
        os._exit(EXIT_INTERRUPTED)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold any stop signal until the block is done (a save is never abandoned half-way), then raise it."""
    with Noted() as held:
        yield
    if held.noted:
        raise KeyboardInterrupt
