"""support/signals.py: every catchable signal that ends a process stops it one orderly way."""

import os
import signal
import sys

import pytest
from conftest import run_script

from support import signals

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@pytest.fixture(autouse=True)
def handlers_restored():
    saved = {number: signal.getsignal(number) for number in signals.STOP_SIGNALS}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


def test_the_stop_signals_are_those_that_end_a_process_by_default():
    assert set(signals.STOP_SIGNALS) == {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT"])
def test_each_stop_raises_keyboard_interrupt(name):
    signals.stop_raises()
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), getattr(signal, name))


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT"])
def test_a_stop_is_held_until_the_block_ends(name):
    signals.stop_raises()
    done = []
    with pytest.raises(KeyboardInterrupt):
        with signals.deferred():
            os.kill(os.getpid(), getattr(signal, name))
            done.append("the block went on")
    assert done == ["the block went on"]


def test_noted_records_the_signal_and_puts_the_handlers_back():
    signals.stop_raises()
    before = {number: signal.getsignal(number) for number in signals.STOP_SIGNALS}
    with signals.Noted() as held:
        os.kill(os.getpid(), signal.SIGHUP)
    assert held.noted and held.signum == signal.SIGHUP
    assert {number: signal.getsignal(number) for number in signals.STOP_SIGNALS} == before


def test_ignoring_stops_lets_the_process_finish():
    signals.ignore_stops()
    for number in signals.STOP_SIGNALS:
        os.kill(os.getpid(), number)  # nothing happens: the process is on its way out


def test_the_end_of_a_process_notes_a_first_stop_and_a_second_ends_it_at_once():
    """signals.Ending: the last moments of a program (cli.end_process) never raise; a second stop does not wait."""
    import subprocess

    from conftest import PROJECT_DIR

    script = (
        "import os, signal, sys\n"
        "from support import signals\n"
        "ending = signals.Ending('last words\\n')\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "print('went on, noted:', ending.noted, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "print('never printed', flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=60)
    assert done.returncode == signals.EXIT_INTERRUPTED
    assert done.stdout == "went on, noted: True\n" and done.stderr == "last words\n"


NOHUP = """
import os, signal
from support import signals
signals.stop_raises()
os.kill(os.getpid(), signal.SIGHUP)
print("went on after SIGHUP")
try:
    os.kill(os.getpid(), signal.SIGINT)
except KeyboardInterrupt:
    print("stopped by SIGINT")
"""


def test_a_sighup_ignored_from_the_start_stays_ignored():
    """`nohup python main.py &` (SIGHUP ignored when the process starts, so that closing the terminal leaves it
    running): the run went on being stopped by it. A SIGINT ignored from the start (a script's `cmd &`) still stops."""

    def as_nohup_and_a_background_job():
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    done = run_script("-c", NOHUP, preexec_fn=as_nohup_and_a_background_job)
    assert done.returncode == 0 and done.stdout.split("\n")[:2] == ["went on after SIGHUP", "stopped by SIGINT"], done
