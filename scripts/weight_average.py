"""What a moving average of the weights adds to a recipe, measured on a validation hold-out only.

Trains the recipe once (the same code as `python main.py`, holding out --val-size training images) and,
after every epoch, scores the trained weights and exponential moving averages of them with several
decays (train.WeightAverage, the average `--ema-decay` keeps). The averages only watch the training,
so one run measures them all. The test set is not read.

    python -m scripts.weight_average --recipe best --decays 0.99 0.999 0.9999 --data-dir ../shared/mnist

Flags this script does not know are main.py's recipe flags (e.g. --epochs 30 --lr 0.02).
"""

from dataclasses import replace

from support.cli import CliParser, number, output_file, run_cli

import torch

from data import add_data_args, data_source, make_loaders
from main import add_recipe_args, recipe_flags
from support.files import check_output_file, json_kind, write_json
from support.recipes import resolve_recipe
from train import TrainState, WeightAverage, accuracy, train_one_epoch

SUMMARY = json_kind("an average summary", {"recipe", "epochs", "val_size"})  # --out: replaces only its own kind


class Averages:
    """Several WeightAverages of one model, updated together (train_one_epoch calls update())."""

    def __init__(self, model: torch.nn.Module, decays: list[float]):
        self.each = {decay: WeightAverage(model, decay) for decay in decays}

    def update(self, model: torch.nn.Module) -> None:
        for average in self.each.values():
            average.update(model)


def main(argv: list[str] | None = None) -> None:
    p = CliParser(__doc__)
    add_data_args(p)
    add_recipe_args(p)
    p.add_argument("--decays", type=number(float, 0, 0.9999), nargs="+", default=[0.99, 0.999, 0.9999])
    p.add_argument("--out", type=output_file, help="also write the per-epoch accuracies here (JSON)")
    args = p.parse_args(argv)
    args.decays = list(dict.fromkeys(args.decays))  # (one column per decay)
    if args.out:
        check_output_file(args.out, "--out", kind=SUMMARY, example="average.json")
    flags = recipe_flags(args)
    if flags.pop("full_c3", False) or "ema_decay" in flags:
        p.error("--full-c3 and --ema-decay are not this script's: it measures LeCun's table, with --decays")
    recipe = resolve_recipe(flags.pop("name", "default"), {"val_size": 10_000, **flags})
    if recipe.val_size == 0:
        p.error("--val-size 0 would score on the test set; hold out training images instead")
    recipe = replace(recipe, ema_decay=0.0)  # this script keeps its own averages
    device = torch.device("cpu")
    loaders = make_loaders(data_source(args).open(), recipe, device)
    state = TrainState({"c3_table": True}, recipe, loaders, device)
    state.average = Averages(state.model, args.decays)
    print(f"recipe: {recipe}\n{'epoch':>5} {'trained':>8}" + "".join(f" {f'ema {d:g}':>11}" for d in args.decays))
    rows = []
    for epoch in range(1, recipe.epochs + 1):
        train_one_epoch(state, loaders.train, log_interval=10**9)
        scores = [accuracy(state.model, loaders.held_out, device)]
        scores += [accuracy(a.model, loaders.held_out, device) for a in state.average.each.values()]
        rows.append(
            {"epoch": epoch, "trained": scores[0], **{f"ema {d:g}": s for d, s in zip(args.decays, scores[1:])}}
        )  # noqa: E501
        print(f"{epoch:>5} {100 * scores[0]:>7.2f}%" + "".join(f" {100 * s:>10.2f}%" for s in scores[1:]), flush=True)
    if args.out:
        write_json({"recipe": recipe.__dict__, "val_size": recipe.val_size, "epochs": rows}, args.out)


if __name__ == "__main__":
    run_cli(main)
