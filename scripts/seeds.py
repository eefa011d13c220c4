"""Train the default recipe once per seed, each in a fresh `python main.py` process, and
summarize the final-epoch test accuracy (the number the README reports).

    python scripts/seeds.py --seeds 0 1 2 --data-dir ../shared/mnist --json runs/seeds.json
"""

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from bench import first_epoch_reaching  # noqa: E402
from helper import CliParser, run_cli, write_json  # noqa: E402


def run_seed(seed: int, out_dir: Path, extra: list[str]) -> dict:
    """One cold-start `python main.py --seed N`; its log goes to out_dir/seedN/train.log."""
    run_dir = out_dir / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = run_dir / "lenet5.pt"
    cmd = [sys.executable, str(PROJECT_DIR / "main.py"), "--seed", str(seed), "--out", str(checkpoint)]
    cmd += ["--report-dir", str(run_dir), *extra]
    started = time.time()
    with open(run_dir / "train.log", "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"seed {seed} failed (exit {done.returncode}); see {run_dir / 'train.log'}")
    metrics = json.loads(checkpoint.with_suffix(".json").read_text())
    epoch, seconds = first_epoch_reaching(metrics, 0.99, started)
    return {
        "seed": seed,
        "final_test_accuracy": metrics["test_accuracy"],
        "epoch_reaching_99.0": epoch,
        "seconds_to_99.0": seconds,
        "train_seconds": metrics["train_seconds"],
        "wall_seconds": time.time() - started,
    }


def main(argv: list[str] | None = None) -> None:
    p = CliParser(__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per seed")
    p.add_argument("--data-dir", help="passed to main.py")
    p.add_argument("--out-dir", type=Path, default=PROJECT_DIR / "runs", help="checkpoints, reports and logs")
    p.add_argument("--json", type=Path, help="also write the summary here")
    args, extra = p.parse_known_args(argv)  # anything else goes to main.py as is
    extra += ["--data-dir", args.data_dir] if args.data_dir else []
    rows = []
    print(f"{'seed':>4} {'final test acc':>15} {'99.0% at epoch':>15} {'s to 99.0%':>11} {'train s':>8} {'wall s':>7}")
    for seed in args.seeds:
        r = run_seed(seed, args.out_dir, extra)
        rows.append(r)
        to99 = f"{r['seconds_to_99.0']:.1f}" if r["seconds_to_99.0"] else "-"
        print(
            f"{seed:>4} {100 * r['final_test_accuracy']:>14.2f}% {r['epoch_reaching_99.0'] or '-':>15} {to99:>11} "
            f"{r['train_seconds']:>8.1f} {r['wall_seconds']:>7.1f}",
            flush=True,
        )
    accuracies = [r["final_test_accuracy"] for r in rows]
    spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    print(f"mean {100 * statistics.mean(accuracies):.2f}% (std {100 * spread:.2f}) over {len(rows)} seeds")
    if args.json:
        write_json({"runs": rows, "mean_test_accuracy": statistics.mean(accuracies), "std": spread}, args.json)


if __name__ == "__main__":
    run_cli(main)
