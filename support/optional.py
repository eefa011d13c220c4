"""The optional parts of a run: a TensorBoard log, a figure, the report folder, a cache. The run does not need
them, so a part that fails is one warning on stderr and is skipped from then on; training goes on, and the
checkpoint is saved. The one mechanism every such part goes through: `attempt`, or an `OptionalPart`
for a part that is called again and again (a log written at every epoch).

A stop signal is not a failure (it is a BaseException, not an Exception): it still stops the run.
"""

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def attempt(what: str, action: Callable[[], T]) -> T | None:
    """action(), or, when it fails, None and one warning line naming `what` and the cause."""
    try:
        return action()
    except Exception as err:
        warn(what, err)
        return None


def warn(what: str, err: BaseException) -> None:
    lines = str(err).strip().splitlines()
    cause = lines[0] if lines else type(err).__name__
    print(f"warning: {what} failed and is skipped ({cause}); the run goes on", file=sys.stderr, flush=True)


class OptionalPart:
    """A part called many times: after its first failure (one warning) it is skipped for the rest of the run."""

    def __init__(self, what: str):
        self.what, self.failed = what, False

    def __call__(self, action: Callable[[], T]) -> T | None:
        if self.failed:
            return None
        try:
            return action()
        except Exception as err:
            self.fail(err)
            return None

    def fail(self, err: BaseException) -> None:
        """The part failed (in a call, or in a thread of its own): one warning, the first time."""
        if not self.failed:
            self.failed = True
            warn(self.what, err)
