from cli import UserError

import pytest

from augment import Augmentation
from recipes import RECIPES, Recipe, augmentation_for, resolve_recipe


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
