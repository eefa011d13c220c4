"""The 1998 recipe beside today's: what each 1998 choice costs or buys, one changed at a time, on validation.

    python -m scripts.lecun1998 choices --data-dir ../shared/mnist --out docs/outputs/lecun1998_choices.json
    python -m scripts.lecun1998 curve runs/lecun1998/seed*/lenet5.json --out docs/figures/lecun1998_curve.png
    python -m scripts.lecun1998 train-error --data-dir ../shared/mnist runs/lecun1998/seed*/lenet5.pt

`choices` trains `--recipe lecun1998` holding out 10,000 training images, then once more per variant, each
replacing one 1998 choice with what the package's default recipe does instead, and prints the validation error
of each (the test set is not read). Flags it does not know go to main.py unchanged (e.g. --allow-custom-data),
but none that would change what a row compares: --recipe, --resume, or a flag a variant sets itself (--lr, say).
`curve` draws the training and test error per pass of finished runs (their metrics .json, from `python -m
scripts.seeds --recipe lecun1998`; each checked whole, and all seeds of one recipe) beside the paper's two numbers.
`train-error` scores finished checkpoints on the 60,000 training images as they are (undistorted, the weights
fixed), the paper's training error; the curve's training error is the running one, taken while each pass trains.
"""

import json
import re
import statistics
from pathlib import Path

from support.cli import PROJECT_DIR, CliParser, UserError, number, one_line, output_file, print_results, run_cli

from data import DataSource, add_data_args, data_source, eval_loader
from eval import evaluate
from helper import load_model
from scripts.runs import run_main
from support.figures import FIGURE, pyplot, save_figure
from support.files import OutputPlan, check_output_dir, check_output_file, json_kind, refuse_special_file, write_json
from support.recipes import with_added_fields

SGD = ["--optimizer", "sgd", "--lr", "0.01", "--momentum", "0.95", "--nesterov", "--schedule", "linear",
       "--batch-size", "64"]  # fmt: skip
# Each variant: what it replaces, and the main.py flags that replace it (on top of --recipe lecun1998).
VARIANTS = {
    "1998 recipe": ("as the paper (with this package's mu)", []),
    "MAP loss -> cross-entropy": ("cross-entropy over the ten RBF outputs", ["--loss", "cross_entropy"]),
    "SDLM -> SGD": (
        "the default recipe's optimizer: SGD lr 0.01, Nesterov momentum 0.95, linear decay, batches of 64",
        SGD,
    ),
    "SDLM -> SGD, network -> today's": (
        "and LeNet5.py's network (tanh, average pooling, a linear output, PyTorch's initialisation) with "
        "cross-entropy: one change from the row above",
        [*SGD, "--network", "lenet5", "--loss", "cross_entropy"],
    ),
    "one pattern -> batches of 8": ("batches of 8 with 8 times the step: sooner on two cores", ["--batch-size", "8"]),
    "mu 1 -> 0.02": ("appendix C's mu", ["--sdlm-mu", "0.02"]),
}
CHOICES = json_kind("a choices summary", {"main_flags", "rows"})
PAPER = {"training error after 19 passes": 0.35, "test error after 20 passes": 0.95}  # percent, section III.C


def choices(main_flags: list[str], out_dir: Path, only: list[str]) -> list[dict]:
    """Each variant trained on the training images less the held-out ones, and scored on those; a row each."""
    rows = []
    print(f"{'variant':<28} {'val error':>9} {'best':>6} {'train s':>8}  what it trains with instead")
    for name, (what, flags) in VARIANTS.items():
        if only and name not in only:
            continue
        folder = out_dir / re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")  # "a -> b c": a_b_c
        run = run_main(["--recipe", "lecun1998", *main_flags, *flags], folder, target=1.0)
        row = {"variant": name, "instead": what, "flags": flags, "val_error": 1 - run.final_eval_accuracy,
               "best_val_error": 1 - run.best_eval_accuracy, "train_seconds": run.train_seconds}  # fmt: skip
        rows.append(row)
        print(f"{name:<28} {100 * row['val_error']:>8.2f}% {100 * row['best_val_error']:>5.2f}% "
              f"{run.train_seconds:>8.0f}  {what}", flush=True)  # fmt: skip
    return rows


def refuse_redefining_flags(main_flags: list[str]) -> None:
    """The flags `choices` passes on to main.py may not change what its rows compare: --recipe (every variant is
    --recipe lecun1998), a flag a variant sets itself (the row would train something else than it is named
    for), or --resume (every row would be the same resumed run)."""
    set_by_variants = {token for _, flags in VARIANTS.values() for token in flags if token.startswith("--")}
    for token in main_flags:
        name = token.split("=", 1)[0]
        flag = "--" + name.removeprefix("--no-") if name.startswith("--no-") else name  # --no-nesterov: --nesterov
        if flag in ("--recipe", "--resume"):
            raise UserError(
                f"choices: every variant is a fresh run of --recipe lecun1998 with one choice replaced: drop {name}"
            )
        if flag in set_by_variants:
            raise UserError(
                f"choices: {name} is one of the choices its variants replace (a row would train something "
                "else than it is named for): drop it, and train such a run with python main.py"
            )


def read_run(path: Path) -> dict:
    """A finished lecun1998 run's metrics (its lenet5.json), checked whole before anything is drawn: its recipe,
    and every pass in order, with its number and its training and test accuracy (each between 0 and 1)."""
    refuse_special_file(path, "curve", fix="give a run's lenet5.json")  # (a pipe would be waited on forever)

    def wrong(what: str) -> UserError:
        return UserError(f"{path}: {what}; give the lenet5.json of a finished `main.py --recipe lecun1998` run")

    try:
        metrics = json.loads(path.read_text())
    except OSError as err:
        raise wrong(f"cannot be read ({err.strerror or err})") from None
    except (ValueError, RecursionError) as err:  # (UnicodeDecodeError is a ValueError)
        raise wrong(f"not JSON ({err})") from None
    recipe, epochs = (metrics.get(key) if isinstance(metrics, dict) else None for key in ("recipe", "epochs"))
    if not isinstance(recipe, dict) or not isinstance(epochs, list):
        raise wrong("not a main.py metrics file (it has no recipe or no per-pass epochs)")
    if recipe.get("name") != "lecun1998":
        raise wrong(f"a run of the {recipe.get('name')!r} recipe, not lecun1998")
    if not epochs:
        raise wrong("it lists no passes")
    for n, epoch in enumerate(epochs, start=1):
        found = epoch.get("epoch") if isinstance(epoch, dict) else None
        if type(found) is not int:
            raise wrong(f"its entry {n} of epochs is not a pass's record (no pass number)")
        if found != n:
            raise wrong(f"its entry {n} of epochs is pass {found}: a pass is missing or out of order")
        if epoch.get("eval_split") == "val":
            raise wrong("its per-pass accuracy is on validation; the curve needs a run without --val-size")
        if epoch.get("eval_split") != "test":
            raise wrong(f"its pass {n} was not scored on the test set")
        for key in ("train_accuracy", "eval_accuracy"):
            value = epoch.get(key)
            if type(value) not in (int, float) or not 0 <= value <= 1:  # (NaN fails the comparison too)
                raise wrong(f"its pass {n}'s {key} is {value!r}, not an accuracy between 0 and 1")
    if len(epochs) != recipe.get("epochs"):
        raise wrong(f"it holds {len(epochs)} passes of its recipe's {recipe.get('epochs')!r}; not a finished run")
    return metrics


def check_seeds_of_one_recipe(metrics: list[Path], runs: list[dict]) -> None:
    """The curve is a mean over seeds of one recipe: each run once, each of another seed, all else alike."""
    seen: dict[str, Path] = {}
    recipe = with_added_fields({**runs[0]["recipe"], "seed": None})
    for path, run in zip(metrics, runs):
        other = with_added_fields({**run["recipe"], "seed": None})
        differ = sorted(name for name in recipe.keys() | other.keys() if recipe.get(name) != other.get(name))
        if differ:
            raise UserError(
                f"{path} and {metrics[0]} are runs of different recipes ({', '.join(differ)} differ): "
                "the curve is a mean over seeds of one recipe; give runs that differ only in --seed"
            )
        seed = repr(run["recipe"].get("seed"))
        if seed in seen:
            raise UserError(
                f"{path} and {seen[seed]} are both seed {seed} of the recipe, one run counted twice: "
                "give each seed once"
            )
        seen[seed] = path


def refuse_repeats(paths: list[Path]) -> None:
    """A mean over runs counts each run once, however its path is spelt."""
    given: dict[Path, Path] = {}
    for path in paths:
        if path.resolve() in given:
            raise UserError(f"{path} is given twice (also as {given[path.resolve()]}); give each run once")
        given[path.resolve()] = path


def curve(metrics: list[Path], out: Path) -> None:
    """Training error (on the fly, as the paper measures it) and test error per pass, mean over the runs."""
    refuse_repeats(metrics)
    runs = [read_run(path) for path in metrics]
    check_seeds_of_one_recipe(metrics, runs)
    seeds = f"mean of {len(runs)} seeds" if len(runs) > 1 else f"seed {runs[0]['recipe'].get('seed')}"
    runs = [run["epochs"] for run in runs]
    passes = len(runs[0])
    x = list(range(1, passes + 1))
    train = [statistics.mean(100 * (1 - r[i]["train_accuracy"]) for r in runs) for i in range(passes)]
    test = [statistics.mean(100 * (1 - r[i]["eval_accuracy"]) for r in runs) for i in range(passes)]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(x, test, "o-", color="tab:red", label=f"test error, this reproduction ({seeds})")
    ax.plot(x, train, "s-", color="tab:blue", label="training error on the fly, this reproduction")
    ax.plot([20], [PAPER["test error after 20 passes"]], "*", ms=14, color="darkred", label="paper: 0.95 % test")
    ax.plot([19], [PAPER["training error after 19 passes"]], "*", ms=14, color="navy", label="paper: 0.35 % training")
    ax.set(xlabel="pass over the 60,000 training images", ylabel="error (%)", xticks=range(0, passes + 1, 2),
           ylim=(0, max(3.0, min(max(test + train), 5.0))))  # fmt: skip
    ax.set_title("LeNet-5 trained as in 1998, on the axes of the paper's Figure 5")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, out)
    print(f"wrote {out}: test error {test[-1]:.2f} %, training error {train[-1]:.2f} % after pass {passes}")


def train_error(weights: list[Path], source: DataSource) -> list[float]:
    """Each checkpoint's error on the training images, in percent; with several, their mean, which (as the curve's)
    is over seeds of one recipe, each run once."""
    refuse_repeats(weights)
    models = [load_model(path) for path in weights]  # (all checked before any is scored)
    if len(models) > 1:
        recipes = [checkpoint.recipe for _, checkpoint in models]
        unknown = next((path for path, recipe in zip(weights, recipes) if not isinstance(recipe, dict)), None)
        if unknown is not None:
            raise UserError(f"{unknown} records no recipe, so its seed cannot be told; score it on its own")
        check_seeds_of_one_recipe(weights, [{"recipe": recipe} for recipe in recipes])
    mnist, errors, lines = source.open(), [], []
    for path, (model, _) in zip(weights, models):
        result = evaluate(model, eval_loader(mnist.train_images, mnist.train_labels), "cpu")
        errors.append(100 * (1 - result.accuracy))
        count = len(mnist.train_labels)
        wrong = round(count * (1 - result.accuracy))
        lines.append(one_line(f"{path}: training error {errors[-1]:.2f} % ({wrong:,} of {count:,} wrong)"))
    if len(errors) > 1:
        lines.append(f"mean training error {statistics.mean(errors):.2f} % over {len(errors)} checkpoints")
    print_results("\n".join(lines))  # the scores are the product: a closed stdout is an error, not silence
    return errors


def main(argv: list[str] | None = None) -> None:
    p = CliParser(__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("choices", help="the ablation on validation")
    c.add_argument("--out-dir", type=Path, default=PROJECT_DIR / "runs" / "lecun1998-choices")
    c.add_argument("--seed", type=number(int, 0, 2**63 - 1), default=0)
    c.add_argument("--epochs", type=number(int, 1, 100), default=20, help="passes per run")
    c.add_argument("--val-size", type=number(int, 1), default=10_000, help="training images held out to score on")
    c.add_argument("--only", nargs="+", choices=VARIANTS, default=[], help="just these variants")
    c.add_argument("--out", type=output_file, help="also write the rows here (JSON)")
    k = sub.add_parser("curve", help="the error per pass of finished runs")
    k.add_argument("metrics", type=Path, nargs="+", help="the runs' lenet5.json")
    k.add_argument("--out", type=output_file, required=True, help="the figure (PNG)")
    t = sub.add_parser("train-error", help="finished checkpoints scored on the training images")
    t.add_argument("weights", type=Path, nargs="+", help="checkpoints (.pt)")
    add_data_args(t)
    args, extra = p.parse_known_args(argv)
    if args.command == "train-error":
        if extra:
            p.error(f"unrecognized arguments: {' '.join(extra)}")
        train_error(args.weights, data_source(args))
        return
    if extra and args.command == "curve":
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "curve":
        inputs = {f"metrics file {n}": path for n, path in enumerate(args.metrics, start=1)}
        OutputPlan(inputs).file(args.out, "--out", kind=FIGURE, example="curve.png")
        if args.out.suffix.lower() != ".png":
            raise UserError(f"--out {args.out}: the figure is a PNG; give a name ending in .png")
        curve(args.metrics, args.out)
        return
    refuse_redefining_flags(extra)
    if args.out:
        check_output_file(args.out, "--out", kind=CHOICES, example="lecun1998.json")
    check_output_dir(args.out_dir, "--out-dir")
    given = ["--seed", str(args.seed), "--epochs", str(args.epochs), "--val-size", str(args.val_size), *extra]
    rows = choices(given, args.out_dir, args.only)
    if args.out:
        write_json({"main_flags": given, "rows": rows}, args.out)


if __name__ == "__main__":
    run_cli(main)
