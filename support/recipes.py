"""What to train: the Recipe (every value that decides the trained weights) and the named recipes
that `python main.py --recipe NAME` starts from. Flags override a recipe's values one by one."""

import argparse
import math
import time
from dataclasses import dataclass, fields, replace
from typing import Any

from support.cli import UserError, add_limit_flag, number

from support.augment import Augmentation

SCHEDULES = ("linear", "cosine", "constant", "lecun1998")
OPTIMIZERS = ("sgd", "adam", "adamw", "muon", "sdlm")
LOSSES = ("cross_entropy", "map")
NETWORKS = ("lenet5", "lecun1998")


@dataclass(frozen=True)
class Recipe:
    name: str = "default"  # the named recipe these values started from (RECIPES)
    network: str = "lenet5"  # "lenet5" (LeNet5.py), or "lecun1998": the 1998 paper's (LeNet5(lecun1998=True))
    epochs: int = 10
    batch_size: int = 64  # the global batch: all processes together, under torchrun
    optimizer: str = "sgd"  # "sgd", "adam"/"adamw", "muon" (optimizers.MuonAndAdamW), "sdlm" (the 1998 paper's)
    lr: float = 0.01  # the write-up's learning rate: the peak of the schedule
    momentum: float = 0.95  # SGD's momentum, or Adam's beta1 (as torch's OneCycleLR treats it; muon: AdamW's)
    beta2: float = 0.999  # Adam's second-moment decay (SGD: unused)
    nesterov: bool = True  # SGD only (muon: Muon's own momentum is Nesterov's, 0.95, whatever this says)
    muon_conv: bool = False  # muon only: Muon on C1's and C3's filters too (flattened), not AdamW
    weight_decay: float = 0.0  # SGD and Adam: an L2 penalty in the gradient; AdamW and muon: decoupled decay
    schedule: str = "linear"  # per step: "linear" decays to 0, "cosine" likewise, "constant" keeps lr, "lecun1998"
    loss: str = "cross_entropy"  # or "map": the 1998 paper's MAP criterion over its RBF penalties
    map_j: float = 0.1  # map only: the MAP criterion's constant j, which caps how far it pushes wrong classes away
    sdlm_mu: float = 0.02  # sdlm only: mu in its step lr / (mu + curvature), appendix C's 0.02 (see RECIPES)
    warmup_epochs: float = 0.0  # first, a linear ramp of the learning rate from 0 over this many epochs
    augment: bool = True  # random rotation, zoom and shift of each training image
    rotation: float = 10.0  # with augment: turned by up to +-this many degrees
    zoom: float = 0.1  # with augment: scaled by a factor of up to 1 +- this
    shift: float = 2.0  # with augment: moved by up to +-this many pixels on each axis
    shear: float = 0.0  # with augment: x moved by up to +-this times y (a slant)
    squeeze: float = 0.0  # with augment: widened by a factor up to 1 + this and made as much shorter, or the reverse
    elastic_alpha: float = 0.0  # with augment: elastic distortion strength in pixels (0: off)
    elastic_sigma: float = 4.0  # smoothness of the elastic displacement field, in pixels
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # >0: evaluate and save an exponential moving average of the weights (0: off)
    seed: int = 0
    val_size: int = 0  # training images held out for validation
    limit: int | None = None  # use only the first N training and test images


# Fields added after checkpoints were first saved, with the values that reproduce how those were trained.
ADDED_FIELDS: dict[str, Any] = {
    "optimizer": "sgd", "beta2": 0.999, "ema_decay": 0.0, "rotation": 10.0, "zoom": 0.1, "shift": 2.0,
    "network": "lenet5", "loss": "cross_entropy", "sdlm_mu": 0.02, "shear": 0.0, "map_j": 0.1,
    "squeeze": 0.0, "muon_conv": False,
}  # fmt: skip


def with_added_fields(values: dict[str, Any]) -> dict[str, Any]:
    """A saved recipe's values, with the fields added since it was saved at the values it was trained with."""
    return {**ADDED_FIELDS, **values}


# name: (one line for --help, the values that differ from Recipe's defaults). How they were chosen,
# with the measurements, is in docs/recipes.md and docs/lecun1998.md; scripts/tune.py holds the method.
RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("the write-up's SGD lr 0.01, Nesterov momentum, linear decay, random affine; 10 epochs", {}),
    "best": (
        "the highest test accuracy: elastic distortions on top of the affine ones, 60 epochs",
        {"epochs": 60, "elastic_alpha": 34.0, "elastic_sigma": 6.0},
    ),
    "fast": (
        "the shortest run found to end at >= 99 % test accuracy: 2 epochs of Muon and AdamW, batches of 256, "
        "label smoothing, milder distortions",
        {
            "epochs": 2,
            "batch_size": 256,
            "optimizer": "muon",
            "lr": 0.02,
            "momentum": 0.7,
            "beta2": 0.9,
            "warmup_epochs": 0.1,
            "label_smoothing": 0.1,
            "rotation": 3.0,
            "zoom": 0.03,
            "shift": 1.0,
        },
    ),
    "lecun1998": (
        "LeNet-5 as the 1998 paper trained it: its network (RBF output, scaled tanh, trainable subsampling), MAP "
        "loss and stochastic diagonal Levenberg-Marquardt, 20 passes",
        {
            "network": "lecun1998",
            "loss": "map",
            "optimizer": "sdlm",
            "lr": 5e-4,  # appendix C's global step for the first two passes; the schedule lowers it
            "schedule": "lecun1998",
            "epochs": 20,
            # One departure from the paper, measured in docs/lecun1998.md: appendix C's mu = 0.02 diverges here and
            # mu = 1 does not. One pattern a step, as the paper: batches of 2, 4 and 8 with the step scaled are
            # sooner, and did no better on the validation hold-out.
            "sdlm_mu": 1.0,
            "batch_size": 1,
            # The paper does not print j; 3 scored best of 0.1, 1, 3, 6 and 10 on the validation hold-out.
            "map_j": 3.0,
            "momentum": 0.0,
            "nesterov": False,
            "augment": False,
        },
    ),
}


# The fields that only shape the distortions: meaningless with --no-augment (elastic_alpha 0 just says "off").
DISTORTIONS = ("rotation", "zoom", "shift", "shear", "squeeze", "elastic_alpha", "elastic_sigma")
# The largest affine ranges, for main.py's flags and for a saved recipe alike.
AFFINE_LIMITS = {"rotation": 180, "zoom": 0.5, "shift": 16, "shear": 1, "squeeze": 0.5}


def resolve_recipe(name: str, overrides: dict[str, Any]) -> Recipe:
    """RECIPES[name] with the given fields overridden; flags that contradict each other are a UserError."""
    if name not in RECIPES:
        raise UserError(f"--recipe {name!r} is not one of {', '.join(RECIPES)}")
    recipe = Recipe(**{**RECIPES[name][1], **overrides, "name": name})
    if not recipe.augment:
        _refuse_distortions_without_augment(name, overrides)
        recipe = replace(recipe, elastic_alpha=0.0)  # (--recipe best --no-augment): no distortion of any kind
    if recipe.optimizer not in OPTIMIZERS:
        raise UserError(f"--optimizer {recipe.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    if recipe.loss == "map" and recipe.network != "lecun1998":
        raise UserError("--loss map scores the 1998 network's RBF penalties: add --network lecun1998")
    if recipe.network == "lecun1998" and recipe.optimizer == "muon":
        raise UserError("--optimizer muon is for LeNet5.py's network: use sdlm, sgd, adam or adamw with lecun1998")
    if "map_j" in overrides and recipe.loss != "map":
        raise UserError("--map-j is the map loss's constant: drop it, or add --loss map")
    if "sdlm_mu" in overrides and recipe.optimizer != "sdlm":
        raise UserError("--sdlm-mu is the sdlm optimizer's: drop it, or add --optimizer sdlm")
    if recipe.optimizer == "sdlm" and recipe.network != "lecun1998":
        raise UserError("--optimizer sdlm works out the curvature of the 1998 network: add --network lecun1998")
    if recipe.optimizer == "sdlm" and recipe.momentum != 0:
        raise UserError("--optimizer sdlm takes no momentum: give --momentum 0")
    if overrides.get("muon_conv") and recipe.optimizer != "muon":
        raise UserError("--muon-conv steps the filters with Muon: drop it, or add --optimizer muon")
    if recipe.optimizer == "sgd" and "beta2" in overrides:
        raise UserError("--beta2 is Adam's: drop it, or add --optimizer adam")
    if recipe.optimizer != "sgd":
        if overrides.get("nesterov"):
            raise UserError(f"--nesterov is SGD's: drop it, or use --optimizer sgd (not {recipe.optimizer})")
        recipe = replace(recipe, nesterov=False)  # recorded as trained
    if overrides.get("nesterov") and recipe.momentum == 0:
        raise UserError("--nesterov needs momentum: give --momentum above 0, or --no-nesterov")
    if recipe.warmup_epochs > recipe.epochs:
        raise UserError(
            f"--warmup-epochs {recipe.warmup_epochs:g} is longer than the run's {recipe.epochs} epochs: the learning "
            f"rate would never reach its peak; give at most {recipe.epochs}"
        )
    return recipe


def _refuse_distortions_without_augment(name: str, overrides: dict[str, Any]) -> None:
    """A distortion flag given to a run without augmentation: name the flags given, and what turned it off (the
    user's --no-augment, to drop, or the recipe itself, which --augment turns on). --elastic-alpha 0 says "off"."""
    given = [f for f in DISTORTIONS if f in overrides and not (f == "elastic_alpha" and overrides[f] == 0)]
    if not given:
        return
    flags = ["--" + field.replace("_", "-") for field in given]
    named = flags[0] if len(flags) == 1 else f"{', '.join(flags[:-1])} and {flags[-1]}"
    if "augment" in overrides:  # the user's own --no-augment
        raise UserError(f"{named} would distort the augmented images: drop --no-augment")
    raise UserError(
        f"{named} would distort the augmented images, and --recipe {name} trains without augmentation: add --augment"
    )


def run_name(recipe_name: str, seed: int, now: float | None = None) -> str:
    """A run's folder name, YYYYMMDD-HHMMSS_<recipe>-seed<N>: runs sort by their start."""
    return f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}_{recipe_name}-seed{seed}"


def flag_text(name: str, value: Any) -> str:
    """A Recipe field and value as the command-line flag that sets it: ("epochs", 3) -> "--epochs 3"."""
    flag = "--" + ("recipe" if name == "name" else name.replace("_", "-"))
    return (flag if value else f"--no-{flag[2:]}") if isinstance(value, bool) else f"{flag} {value}"


def recipe_from_saved(values: Any) -> Recipe:
    """The Recipe a checkpoint recorded; ValueError when a field is missing, unknown or of the wrong
    kind (a file from another version, or edited by hand), rather than training on a guess."""
    names = {f.name for f in fields(Recipe)}
    if isinstance(values, dict):
        values = with_added_fields(values)
    if not isinstance(values, dict) or set(values) != names:
        raise ValueError(f"its recipe has not this version's fields ({', '.join(sorted(names))})")
    wrong = [f.name for f in fields(Recipe) if not _fits(values[f.name], f.default)]
    recipe = Recipe(**values)
    bad_range = recipe.epochs < 1 or recipe.batch_size < 1 or recipe.lr <= 0 or recipe.optimizer not in OPTIMIZERS
    bad_range |= recipe.schedule not in SCHEDULES or recipe.loss not in LOSSES or recipe.network not in NETWORKS
    bad_range |= recipe.momentum >= 1 or recipe.beta2 >= 1 or recipe.ema_decay >= 1 or recipe.sdlm_mu <= 0
    bad_range |= not -100 <= recipe.map_j <= 100
    bad_range |= any(getattr(recipe, name) > limit for name, limit in AFFINE_LIMITS.items())
    if wrong or bad_range:
        raise ValueError(f"its recipe holds values this version cannot train with ({', '.join(wrong) or 'ranges'})")
    return recipe


def _fits(value: Any, default: Any) -> bool:
    """Whether `value` has the kind of the field whose default is `default` (numbers: finite, >= 0)."""
    if isinstance(default, (bool, str)):
        return type(value) is type(default)
    if default is None:  # limit: None or a count
        return value is None or (type(value) is int and value >= 1)
    kinds = (int,) if isinstance(default, int) else (int, float)
    return type(value) in kinds and math.isfinite(value) and value >= 0


def augmentation_for(recipe: Recipe) -> Augmentation | None:
    if not recipe.augment:
        return None
    return Augmentation(rotation=recipe.rotation, zoom=recipe.zoom, shift=recipe.shift, shear=recipe.shear,
                        squeeze=recipe.squeeze, elastic_alpha=recipe.elastic_alpha,
                        elastic_sigma=recipe.elastic_sigma)  # fmt: skip


# --- the recipe flags, as main.py (and the scripts that train like it) take them ---------------------


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    """The recipe flags. They are absent from the parsed args unless given, so --resume can tell which were."""
    defaults = Recipe()
    g = p.add_argument_group("training recipe: --recipe picks the starting values, the other flags override them")
    names = "; ".join(f"{name}: {line}" for name, (line, _) in RECIPES.items()).replace("%", "%%")  # argparse
    g.add_argument("--recipe", default=argparse.SUPPRESS, choices=RECIPES, help=f"{names} (default: default)")

    def flag(name: str, help: str, **kwargs) -> None:
        default = getattr(defaults, name[2:].replace("-", "_"), None)
        shown = f" (default: {default})" if default is not None and default is not False else ""  # (False: off)
        g.add_argument(name, default=argparse.SUPPRESS, help=help + shown, **kwargs)

    flag("--epochs", "passes over the training set", type=number(int, 1, 10_000))
    flag("--batch-size", "training images per optimizer step", type=number(int, 1))
    flag("--network", "lenet5 (LeNet5.py) or lecun1998 (the 1998 paper's: RBF output, its squashing)",
         choices=NETWORKS)  # fmt: skip
    flag("--optimizer", "torch.optim.SGD, Adam, AdamW, muon (Muon on C5 and F6, AdamW on the rest), or sdlm "
         "(the 1998 paper's stochastic diagonal Levenberg-Marquardt)", choices=OPTIMIZERS)  # fmt: skip
    flag("--loss", "cross_entropy, or map (the 1998 paper's criterion; needs --network lecun1998)", choices=LOSSES)
    flag("--map-j", "map: the MAP criterion's constant j", type=number(float, -100, 100))
    flag("--sdlm-mu", "sdlm: mu, which bounds each parameter's step at lr / mu", type=number(float, 0, low_open=True))
    flag("--lr", "learning rate, the schedule's peak", type=number(float, 0, low_open=True))
    flag("--momentum", "SGD momentum, or Adam's beta1 (muon: AdamW's)", type=number(float, 0, 0.999))
    flag("--beta2", "Adam's second-moment decay", type=number(float, 0, 0.9999))
    flag("--nesterov", "Nesterov momentum (SGD)", action=argparse.BooleanOptionalAction)
    flag("--muon-conv", "muon: Muon on C1's and C3's filters too, flattened to matrices (else AdamW)",
         action=argparse.BooleanOptionalAction)  # fmt: skip
    flag("--weight-decay", "L2 penalty (AdamW and muon: decoupled weight decay)", type=number(float, 0))
    flag("--schedule", "per-step learning-rate schedule", choices=SCHEDULES)
    flag("--warmup-epochs", "linear learning-rate ramp from 0 at the start", type=number(float, 0, 100))
    flag("--augment", "random rotation, zoom and shift of training images", action=argparse.BooleanOptionalAction)
    limit = AFFINE_LIMITS
    flag("--rotation", "with --augment: the largest rotation, degrees", type=number(float, 0, limit["rotation"]))
    flag("--zoom", "with --augment: the largest zoom in or out, a fraction", type=number(float, 0, limit["zoom"]))
    flag("--shift", "with --augment: the largest shift on each axis, pixels", type=number(float, 0, limit["shift"]))
    flag("--shear", "with --augment: the largest horizontal shear, x per y", type=number(float, 0, limit["shear"]))
    flag("--squeeze", "with --augment: the largest squeeze (wider and shorter, or the reverse), a fraction",
         type=number(float, 0, limit["squeeze"]))  # fmt: skip
    flag("--elastic-alpha", "with --augment: elastic distortion strength, pixels (0: off)", type=number(float, 0, 100))
    flag("--elastic-sigma", "smoothness of the elastic field, pixels", type=number(float, 0.5, 8))
    flag("--label-smoothing", "cross-entropy label smoothing", type=number(float, 0, 0.5))
    ema = "evaluate and save a moving average of the weights with this decay per step (0: off)"
    flag("--ema-decay", ema, type=number(float, 0, 0.9999))
    flag("--seed", "seed for weights, shuffling and augmentation", type=number(int, 0, 2**63 - 1))
    flag("--val-size", "training images held out for validation (0: test accuracy per epoch)", type=number(int, 0))
    add_limit_flag(g, default=argparse.SUPPRESS)
    flag("--full-c3", "connect every C3 map to all six S2 maps instead of LeCun's table", action="store_true")


def recipe_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe flags given on the command line (absent ones are not in `args`), by Recipe field name;
    "name" for --recipe, "full_c3" for --full-c3."""
    given = {f.name: getattr(args, f.name) for f in fields(Recipe) if hasattr(args, f.name)}
    if hasattr(args, "recipe"):
        given["name"] = args.recipe
    if hasattr(args, "full_c3"):
        given["full_c3"] = args.full_c3
    return given
