import pytest

from augment import Augmentation
from helper import UserError
from recipes import RECIPES, Recipe, augmentation_for, resolve_recipe


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
