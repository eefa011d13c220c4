"""support/optional.py: an optional part that fails is one warning and is skipped; the run goes on; a stop
signal still stops it."""

import pytest

from support.optional import OptionalPart, attempt


def test_attempt_gives_the_result_or_one_warning(capsys):
    assert attempt("the figure", lambda: 42) == 42
    assert attempt("the figure", lambda: 1 / 0) is None
    assert capsys.readouterr().err == "warning: the figure failed and is skipped (division by zero); the run goes on\n"


def test_a_part_that_failed_is_skipped_from_then_on_with_one_warning(capsys):
    part, calls = OptionalPart("the log"), []

    def write(fails: bool):
        calls.append(fails)
        if fails:
            raise OSError(28, "No space left on device")
        return "written"

    assert part(lambda: write(False)) == "written"
    assert part(lambda: write(True)) is None and part(lambda: write(False)) is None  # skipped: not called again
    part.fail(RuntimeError("a thread of its own failed too"))  # (a second failure says nothing more)
    assert calls == [False, True] and part.failed
    assert capsys.readouterr().err.count("warning: the log failed and is skipped") == 1


def test_a_stop_signal_is_not_a_failure():
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        attempt("the report", interrupted)
    with pytest.raises(KeyboardInterrupt):
        OptionalPart("the log")(interrupted)
