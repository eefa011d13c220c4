"""Cold-start training runs, launched as a user launches them, and what they achieved: the final
test accuracy and the time from process start to the end of the first epoch whose test accuracy
reached a target. bench.py and scripts/seeds.py both time accuracy this way."""

import contextlib
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.cli import PROJECT_DIR, CliParser, UserError, run_cli

from support.files import Kind, OutputPlan, json_kind, refuse_foreign_file

# What scripts/baseline.py and scripts/peer.py write for bench.py: a side run outside main.py.
PIPELINE_RESULT = json_kind("a pipeline's result", {"pipeline", "epochs"})
LOG_MARK = "# scripts/runs.py ran: python "  # a log's first line, before the command it ran


def is_own_log(path: Path) -> bool:
    """Whether `path` is a log that run_timed wrote: its first line is the mark (logs written before the mark
    existed begin with main.py's own first line, "device: ...; recipe: {...}")."""
    try:
        with open(path, "rb") as file:
            first = file.readline(1 << 16)
    except OSError:
        return False
    return first.startswith(LOG_MARK.encode()) or (first.startswith(b"device: ") and b"; recipe: {" in first)


TRAIN_LOG = Kind("a training log", is_own_log)


@dataclass(frozen=True)
class Run:
    final_test_accuracy: float
    epochs: int
    target: float
    epoch_reached: int | None  # None: the target was never reached
    seconds_to_target: float | None  # process start to the end of that epoch
    eval_split: str  # what the per-epoch accuracies were measured on: "test", or "val" with --val-size
    final_eval_accuracy: float  # the last epoch's accuracy on eval_split
    best_eval_accuracy: float
    images_per_second: float  # training only (median over the epochs)
    train_seconds: float
    wall_seconds: float


def run_main(flags: list[str], out_dir: Path, target: float = 0.99, processes: int = 1) -> Run:
    """Train with `python main.py FLAGS` in a fresh process (or `torchrun --nproc-per-node N main.py FLAGS`),
    writing into out_dir (its log: out_dir/train.log; plan_run_folder checks what is there before)."""
    out = out_dir / "lenet5.pt"
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)] * (processes > 1)
    command = [*launcher, str(PROJECT_DIR / "main.py"), *flags, "--out", str(out)]
    command += ["--report-dir", str(out_dir / "reports")]
    return run_timed(command, out.with_suffix(".json"), out_dir / "train.log", target)


def plan_run_folder(plan: OutputPlan, out_dir: Path, flag: str) -> None:
    """What run_main writes into out_dir, planned before any run starts: main.py's checkpoint, its metrics and
    resume file, its report folder, and the log; each file already there may only be its own earlier one."""
    from eval import REPORT_FOLDER  # (here: they import torch, which a script's --help does not need)
    from extras.resume import resume_path
    from helper import CHECKPOINT, METRICS

    out = out_dir / "lenet5.pt"
    files = {out.name: CHECKPOINT, out.with_suffix(".json").name: METRICS, resume_path(out).name: CHECKPOINT}
    plan.folder(out_dir, flag, files | {"train.log": TRAIN_LOG})
    plan.folder(out_dir / "reports", flag, REPORT_FOLDER)


def run_timed(command: list[str], metrics_json: Path, log: Path, target: float) -> Run:
    """Run `python COMMAND` (its output into `log`, after a first line naming it), then read the per-epoch
    metrics it wrote as JSON. A file of the user's at `log` is refused, never replaced."""
    refuse_foreign_file(log, "the run's log", TRAIN_LOG, "--out-dir")
    started = time.time()
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        sink = open(log, "w")  # noqa: SIM115 (closed below, after the child has written into it)
        sink.write(f"{LOG_MARK}{' '.join(command)}\n")
        sink.flush()  # (before the child's output, which goes straight into the file)
    except OSError as err:  # a full disk: one line, and no empty log left
        with contextlib.suppress(OSError):
            log.unlink(missing_ok=True)
        raise UserError(
            f"cannot write {log}: {err.strerror or err}; free some space or choose another --out-dir"
        ) from None
    with sink:
        done = subprocess.run([sys.executable, *command], stdout=sink, stderr=subprocess.STDOUT, cwd=PROJECT_DIR)
    wall = time.time() - started
    if done.returncode != 0:  # (the log may live in a temporary folder: quote the reason, or its end)
        lines = log.read_text(errors="replace").strip().splitlines()[1:]  # (not the mark)
        reason = [line for line in lines if line.startswith("error: ")][:1] or lines[-3:]
        raise UserError(f"`python {' '.join(command)}` failed (exit {done.returncode}): {chr(10).join(reason)}")
    return summarize(json.loads(metrics_json.read_text()), started, wall, target)


def summarize(metrics: dict[str, Any], started: float, wall_seconds: float, target: float) -> Run:
    """From a metrics JSON (main.py's, or scripts/baseline.py's) and the time.time() taken just before launch."""
    epochs = metrics["epochs"]
    on_test = epochs[-1]["eval_split"] == "test"  # a target is about test accuracy: never read it off val
    reached = next((e for e in epochs if e["eval_accuracy"] >= target), None) if on_test else None
    return Run(
        final_test_accuracy=metrics["test_accuracy"],
        epochs=len(epochs),
        target=target,
        epoch_reached=reached["epoch"] if reached else None,
        seconds_to_target=reached["finished_at"] - started if reached else None,
        eval_split=epochs[-1]["eval_split"],
        final_eval_accuracy=epochs[-1]["eval_accuracy"],
        best_eval_accuracy=max(e["eval_accuracy"] for e in epochs),
        images_per_second=statistics.median(e["images_per_second"] for e in epochs),
        train_seconds=metrics["train_seconds"],
        wall_seconds=wall_seconds,
    )


NOT_A_COMMAND = (
    "a helper module, not a command: python -m scripts.bench, python -m scripts.seeds and python -m scripts.lecun1998 "
    "launch their training runs with it; run one of those"
)


def main(argv: list[str] | None = None) -> None:
    """`python -m scripts.runs`: --help says what the module is; anything else, one line, exit 2."""
    CliParser(f"{__doc__}\n\nIt is {NOT_A_COMMAND}.").parse_args(argv)
    raise UserError(f"scripts/runs.py is {NOT_A_COMMAND}")


if __name__ == "__main__":
    run_cli(main)
