"""Cold-start runs of `python main.py`, launched as a user launches them, and what they achieved:
the final test accuracy and the time from process start to the end of the first epoch whose test
accuracy reached a target. bench.py and scripts/seeds.py both time accuracy this way."""

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helper import PROJECT_DIR, UserError


@dataclass(frozen=True)
class Run:
    final_test_accuracy: float
    epochs: int
    target: float
    epoch_reached: int | None  # None: the target was never reached
    seconds_to_target: float | None  # process start to the end of that epoch
    best_test_accuracy: float  # the best epoch's held-out accuracy
    train_seconds: float
    wall_seconds: float


def run_main(flags: list[str], out_dir: Path, target: float = 0.99, log: Path | None = None) -> Run:
    """Train with `python main.py FLAGS` in a fresh process, writing into out_dir (and its log to `log`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "lenet5.pt"
    command = [sys.executable, str(PROJECT_DIR / "main.py"), *flags, "--out", str(out)]
    command += ["--report-dir", str(out_dir / "reports")]
    started = time.time()
    with open(log or out_dir / "train.log", "w") as sink:
        done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT)
    wall = time.time() - started
    if done.returncode != 0:
        raise UserError(f"`python main.py {' '.join(flags)}` failed (exit {done.returncode}); see {sink.name}")
    return summarize(json.loads(out.with_suffix(".json").read_text()), started, wall, target)


def summarize(metrics: dict[str, Any], started: float, wall_seconds: float, target: float) -> Run:
    """From main.py's metrics JSON and the time.time() taken just before launching it."""
    epochs = metrics["epochs"]
    reached = next((e for e in epochs if e["eval_accuracy"] >= target), None)
    return Run(
        final_test_accuracy=metrics["test_accuracy"],
        epochs=len(epochs),
        target=target,
        epoch_reached=reached["epoch"] if reached else None,
        seconds_to_target=reached["finished_at"] - started if reached else None,
        best_test_accuracy=max(e["eval_accuracy"] for e in epochs),
        train_seconds=metrics["train_seconds"],
        wall_seconds=wall_seconds,
    )
