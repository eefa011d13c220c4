"""Train a recipe once per seed, each in a fresh `python main.py` process, and summarize the
final-epoch test accuracy and the cold-start time to 99.0 % (the numbers the README reports).

    python -m scripts.seeds --seeds 0 1 2 --data-dir ../shared/mnist --out runs/seeds.json

Flags this script does not know go to main.py unchanged (e.g. --epochs 20 --no-augment).
"""

import statistics
from dataclasses import asdict
from pathlib import Path

from support.cli import PROJECT_DIR, CliParser, UserError, number, output_file, run_cli

from scripts.runs import plan_run_folder, run_main
from support.files import OutputPlan, json_kind, write_json

SUMMARY = json_kind("a seeds summary", {"runs", "mean_test_accuracy"})  # --out: replaces only its own kind


def plan_outputs(seeds: list[int], out_dir: Path, out: Path | None) -> OutputPlan:
    """Each seed once, into a folder of its own under out_dir (its checkpoint, metrics, log and report), each
    file there its own earlier one, all checked before the first seed runs: the summary --out may be none of
    those. Each log is held until the plan is released: a second `seeds` into the same folder is refused
    before it opens a log that the first one is writing."""
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise UserError(f"--seeds gives {', '.join(map(str, repeated))} more than once; give each seed once")
    plan = OutputPlan()
    plan.folder(out_dir, "--out-dir")
    for seed in seeds:
        plan_run_folder(plan, out_dir / f"seed{seed}", "--out-dir")
    if out:
        plan.file(out, "--out", kind=SUMMARY, example="results.json")
    for seed in seeds:
        plan.lock(out_dir / f"seed{seed}" / "train.log", "--out-dir")
    return plan


def main(argv: list[str] | None = None) -> None:
    p = CliParser(__doc__)
    p.add_argument("--seeds", type=number(int, 0), nargs="+", default=[0, 1, 2], help="one run per seed")
    p.add_argument("--data-dir", help="passed to main.py")
    p.add_argument("--out-dir", type=Path, default=PROJECT_DIR / "runs", help="checkpoints, reports and logs")
    p.add_argument("--processes", type=number(int, 1, 64), default=1, help="N > 1: torchrun --nproc-per-node N")
    p.add_argument("--out", type=output_file, help="also write the summary here (JSON)")
    args, extra = p.parse_known_args(argv)  # anything else goes to main.py as is
    if {"--report-dir", "--resume"} & set(extra):
        p.error("main.py's --out, --report-dir and --resume are set per seed (under --out-dir); leave them out")
    with plan_outputs(args.seeds, args.out_dir, args.out):  # (released when the last seed is done)
        extra += ["--data-dir", args.data_dir] if args.data_dir else []
        rows = []
        header = f"{'seed':>4} {'final test acc':>15} {'99.0% at epoch':>15} {'s to 99.0%':>11} {'train s':>8}"
        print(header + f" {'wall s':>7} {'img/s':>7}")
        for seed in args.seeds:
            run = run_main([*extra, "--seed", str(seed)], args.out_dir / f"seed{seed}", 0.99, args.processes)
            rows.append({"seed": seed, **asdict(run)})
            to99 = f"{run.seconds_to_target:.1f}" if run.seconds_to_target else "-"
            print(
                f"{seed:>4} {100 * run.final_test_accuracy:>14.2f}% {run.epoch_reached or '-':>15} {to99:>11} "
                f"{run.train_seconds:>8.1f} {run.wall_seconds:>7.1f} {run.images_per_second:>7,.0f}",
                flush=True,
            )
        accuracies = [r["final_test_accuracy"] for r in rows]
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        rates = [r["images_per_second"] for r in rows]
        print(f"mean {100 * statistics.mean(accuracies):.2f}% (std {100 * spread:.2f}) over {len(rows)} seeds; "
              f"{statistics.mean(rates):,.0f} img/s")  # fmt: skip
        if args.out:
            summary = {"flags": extra, "processes": args.processes, "runs": rows}
            summary |= {"mean_test_accuracy": statistics.mean(accuracies), "std": spread}
            write_json(summary, args.out)


if __name__ == "__main__":
    run_cli(main)
