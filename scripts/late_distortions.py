"""Do the distortions of the last epochs matter? Measured on a validation hold-out only.

Trains a recipe (the same code as `python main.py`, holding out --val-size training images) once, keeping
the whole training state at each --branch epoch (TrainState.state_dict(), what a resume restores), then
finishes the run from each of those states once per variant of the augmentation:
- as trained: the recipe's affine and elastic distortions (the uninterrupted run);
- half: elastic distortions at half the recipe's strength;
- affine: rotation, scale and shift only, no elastic distortion;
- clean: no distortion at all.
It prints the final validation accuracy of each. The test set is not read.

    python -m scripts.late_distortions --recipe best --branch 45 50 --data-dir ../shared/mnist

Flags this script does not know are main.py's recipe flags (e.g. --epochs 30 --seed 1).
"""

from collections.abc import Callable
from dataclasses import replace

from support.cli import CliParser, number, output_file, run_cli

import torch

from data import Loaders, add_data_args, data_source, make_loaders
from main import add_recipe_args, recipe_flags
from support.augment import Augmentation
from support.files import check_output_file, json_kind, write_json
from support.recipes import Recipe, resolve_recipe
from train import TrainingInterrupted, TrainState, accuracy, fit

SUMMARY = json_kind("a branch summary", {"recipe", "val_accuracy"})  # --out: replaces only its own kind


def variants(recipe: Recipe) -> dict[str, Augmentation | None]:
    """The augmentations that the last epochs are trained with, by name."""
    affine = Augmentation()
    return {
        "half": replace(affine, elastic_alpha=recipe.elastic_alpha / 2, elastic_sigma=recipe.elastic_sigma),
        "affine": affine,
        "clean": None,
    }


def finish(state: TrainState, loaders: Loaders, on_epoch: Callable[[TrainState], None] | None = None) -> None:
    """Train to the recipe's last epoch. A Ctrl-C ends the script with 130: a measurement has nothing to save."""
    try:
        fit(state, loaders, log_interval=10**9, on_epoch=on_epoch)
    except TrainingInterrupted:
        raise KeyboardInterrupt from None


def main(argv: list[str] | None = None) -> None:
    p = CliParser(__doc__)
    add_data_args(p)
    add_recipe_args(p)
    p.add_argument("--branch", type=number(int, 1), nargs="+", required=True, help="epochs to branch after")
    p.add_argument("--out", type=output_file, help="also write the accuracies here (JSON)")
    args = p.parse_args(argv)
    if args.out:
        check_output_file(args.out, "--out", kind=SUMMARY, example="late.json")
    flags = recipe_flags(args)
    if flags.pop("full_c3", False):
        p.error("--full-c3 is not this script's: it measures LeCun's table")
    recipe = resolve_recipe(flags.pop("name", "default"), {"val_size": 10_000, **flags})
    if recipe.val_size == 0:
        p.error("--val-size 0 would score on the test set; hold out training images instead")
    if not recipe.augment or any(not 0 < b < recipe.epochs for b in args.branch):
        p.error(f"give an augmented recipe and --branch epochs between 1 and {recipe.epochs - 1}")
    device = torch.device("cpu")
    loaders = make_loaders(data_source(args).open(), recipe, device)
    state = TrainState({"c3_table": True}, recipe, loaders, device)
    branches: dict[int, dict] = {}

    def keep(state: TrainState) -> None:
        if state.epoch in args.branch:
            branches[state.epoch] = state.state_dict()

    finish(state, loaders, on_epoch=keep)
    results = {"as trained": accuracy(state.eval_model, loaders.held_out, device)}
    as_trained = loaders.train.dataset.augmentation
    for epoch, snapshot in sorted(branches.items()):
        for name, augmentation in variants(recipe).items():
            state.load_state_dict(snapshot)
            loaders.train.dataset.augmentation = augmentation  # from the next epoch to the last
            finish(state, loaders)
            results[f"{name}, last {recipe.epochs - epoch}"] = accuracy(state.eval_model, loaders.held_out, device)
        loaders.train.dataset.augmentation = as_trained
    print(f"recipe: {recipe}\n{'last epochs trained with':<26} val acc")
    for name, value in results.items():
        print(f"{name:<26} {100 * value:6.2f}%")
    if args.out:
        write_json({"recipe": recipe.__dict__, "val_accuracy": results}, args.out)


if __name__ == "__main__":
    run_cli(main)
