from dataclasses import asdict

from support.cli import UserError

import pytest
from conftest import assert_user_error

from support.augment import Augmentation
from support.recipes import ADDED_FIELDS, RECIPES, Recipe, augmentation_for, recipe_from_saved, resolve_recipe


def test_no_augment_turns_a_recipes_elastic_distortion_off_too():
    recipe = resolve_recipe("best", {"augment": False})
    assert recipe.epochs == 60 and not recipe.augment and recipe.elastic_alpha == 0
    recipe = resolve_recipe("default", {"augment": False, "elastic_alpha": 0.0})
    assert not recipe.augment and recipe.elastic_alpha == 0


def test_recipes_resolve_and_flags_override():
    for name, (description, values) in RECIPES.items():
        recipe = resolve_recipe(name, {})
        assert recipe.name == name and description
        assert all(getattr(recipe, field) == value for field, value in values.items())
    overridden = resolve_recipe("fast", {"epochs": 7, "seed": 3})
    assert overridden.epochs == 7 and overridden.seed == 3 and overridden.name == "fast"
    assert overridden.momentum == resolve_recipe("fast", {}).momentum != Recipe().momentum  # the rest is kept
    assert resolve_recipe("default", {}) == Recipe()  # the default recipe is Recipe's defaults
    with pytest.raises(UserError, match="--recipe 'fastest' is not one of default, best, fast"):
        resolve_recipe("fastest", {})


def test_augmentation_follows_the_recipe():
    assert augmentation_for(Recipe(augment=False, elastic_alpha=34.0)) is None
    assert augmentation_for(Recipe()) == Augmentation()  # the default: affine only
    assert augmentation_for(resolve_recipe("best", {})).elastic_alpha == RECIPES["best"][1]["elastic_alpha"]
    assert augmentation_for(resolve_recipe("fast", {"shift": 1.5})) == Augmentation(rotation=3, zoom=0.03, shift=1.5)


@pytest.mark.parametrize("flag", ["rotation", "zoom", "shift", "shear", "squeeze", "elastic_sigma"])
def test_a_distortion_range_with_no_augment_is_refused(flag):
    assert not resolve_recipe("fast", {"augment": False}).augment  # the recipe's own ranges are simply unused
    with pytest.raises(UserError, match="distort the augmented images: drop --no-augment"):
        resolve_recipe("default", {"augment": False, flag: 1.0})


def test_adam_takes_no_nesterov_and_records_none():
    recipe = resolve_recipe("default", {"optimizer": "adam"})
    assert recipe.optimizer == "adam" and recipe.nesterov is False  # the recorded recipe says what was trained
    with pytest.raises(UserError, match="--nesterov is SGD's"):
        resolve_recipe("default", {"optimizer": "adamw", "nesterov": True})
    with pytest.raises(UserError, match="--beta2 is Adam's: drop it, or add --optimizer adam"):
        resolve_recipe("default", {"beta2": 0.9})
    with pytest.raises(UserError, match="--nesterov is SGD's"):
        resolve_recipe("fast", {"nesterov": True})  # muon: Muon's own momentum is Nesterov's, not a choice
    with pytest.raises(UserError, match="--muon-conv steps the filters with Muon: drop it, or add --optimizer muon"):
        resolve_recipe("default", {"muon_conv": True})
    assert resolve_recipe("fast", {"muon_conv": True}).muon_conv
    with pytest.raises(UserError, match="--optimizer 'rmsprop' is not one of sgd, adam, adamw, muon"):
        resolve_recipe("default", {"optimizer": "rmsprop"})


def test_a_recipe_saved_before_the_optimizer_and_average_fields_reads_as_it_was_trained():
    saved = asdict(Recipe(epochs=3))
    for name in ADDED_FIELDS:
        del saved[name]
    recipe = recipe_from_saved(saved)
    assert recipe == Recipe(epochs=3) and (recipe.optimizer, recipe.ema_decay) == ("sgd", 0.0)
    with pytest.raises(ValueError, match="cannot train with"):
        recipe_from_saved({**saved, "ema_decay": 1.0})  # an average that never moves
    with pytest.raises(ValueError, match="cannot train with"):
        recipe_from_saved({**saved, "optimizer": "lbfgs"})
    with pytest.raises(ValueError, match="cannot train with"):
        recipe_from_saved({**saved, "zoom": 0.99})  # up to 100 times magnified: no flag allows it


def test_a_distortion_without_augmentation_names_the_flags_given_and_what_turned_augmentation_off():
    """The recipe's own augment=False (lecun1998) asks for --augment; only a --no-augment the user gave is to drop."""
    with pytest.raises(UserError) as err:
        resolve_recipe("lecun1998", {"shear": 0.3})
    assert str(err.value) == (
        "--shear would distort the augmented images, and --recipe lecun1998 trains without augmentation: add --augment"
    )
    with pytest.raises(UserError) as err:
        resolve_recipe("lecun1998", {"augment": False, "squeeze": 0.1, "shear": 0.3, "elastic_alpha": 0.0})
    assert str(err.value) == "--shear and --squeeze would distort the augmented images: drop --no-augment"
    recipe = resolve_recipe("lecun1998", {"augment": True, "shear": 0.3, "squeeze": 0.1})
    assert recipe.augment and (recipe.shear, recipe.squeeze) == (0.3, 0.1)


def test_main_says_add_augment_for_a_recipe_trained_without_it(cli, tmp_path):
    done = cli("main", "--recipe", "lecun1998", "--shear", "0.3", "--out", tmp_path / "l.pt",
               "--report-dir", tmp_path / "reports")  # fmt: skip
    assert_user_error(done, "--shear would distort the augmented images, and --recipe lecun1998 trains without")
    assert "--no-augment" not in done.stderr and done.stderr.rstrip().endswith("add --augment")


def test_the_map_constant_is_the_map_losss_and_a_saved_one_is_checked():
    assert resolve_recipe("lecun1998", {"map_j": 1.0}).map_j == 1.0
    with pytest.raises(UserError, match="--map-j is the map loss's constant: drop it, or add --loss map"):
        resolve_recipe("default", {"map_j": 3.0})
    saved = asdict(resolve_recipe("lecun1998", {}))
    with pytest.raises(ValueError, match="cannot train with"):
        recipe_from_saved({**saved, "map_j": 1e9})  # exp(-j) is 0 far before: no flag allows it
    del saved["map_j"]  # a recipe saved before the field: trained with the constant it had, 0.1
    assert recipe_from_saved(saved).map_j == 0.1
