"""Choose a recipe's hyperparameters on a validation hold-out, never on the test set.

Each candidate (a string of main.py flags) trains on 50,000 training images and is scored on the
other 10,000 (--val-size 10000), once per seed, each in a fresh `python main.py` process. Only
validation accuracy is shown and saved.

    python scripts/tune.py --data-dir ../shared/mnist --seeds 0 1 \\
        --candidates "--recipe best --elastic-alpha 0" "--recipe best" --json docs/tune.json
"""

import shlex
import statistics
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from cli import CliParser, UserError, check_output_dir, check_output_file, number, run_cli  # noqa: E402

from helper import write_json  # noqa: E402
from runs import run_main  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = CliParser(__doc__)
    p.add_argument("--candidates", nargs="+", required=True, help="main.py flags, one quoted string per candidate")
    p.add_argument("--seeds", type=number(int, 0), nargs="+", default=[0], help="one run per seed and candidate")
    p.add_argument("--val-size", type=number(int, 1), default=10_000, help="training images held out")
    p.add_argument("--data-dir", help="passed to main.py")
    p.add_argument("--out-dir", type=Path, default=PROJECT_DIR / "runs" / "tune", help="checkpoints and logs")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    check_output_dir(args.out_dir, "--out-dir")
    if args.json:
        check_output_file(args.json, "--json", example="results.json")
    common = ["--val-size", str(args.val_size)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    candidates = [split_candidate(candidate) for candidate in args.candidates]  # all checked before any run
    rows = []
    for number_, (candidate, candidate_flags) in enumerate(zip(args.candidates, candidates)):
        scores = []
        for seed in args.seeds:
            flags = [*candidate_flags, "--seed", str(seed), *common]  # the last --val-size wins: this one
            run = run_main(flags, args.out_dir / f"c{number_}-seed{seed}")
            if run.eval_split != "val":
                raise UserError(f"{candidate!r} was scored on {run.eval_split}, not on the validation images")
            scores.append(run.final_eval_accuracy)
        mean = statistics.mean(scores)
        rows.append({"candidate": candidate, "seeds": args.seeds, "val_accuracy": scores, "mean": mean})
        print(f"{100 * mean:6.2f}%  (" + ", ".join(f"{100 * s:.2f}" for s in scores) + f")  {candidate}", flush=True)
    if args.json:
        write_json({"val_size": args.val_size, "candidates": rows}, args.json)


def split_candidate(candidate: str) -> list[str]:
    """A candidate's flags, split as a shell would."""
    try:
        return shlex.split(candidate)
    except ValueError as err:  # e.g. an unbalanced quote
        raise UserError(f"--candidates {candidate!r}: {err}; quote each candidate as one string") from None


if __name__ == "__main__":
    run_cli(main)
