from export import contract
from LeNet5 import INPUT_NORMALIZATION
from model_card import model_card
from recipes import Recipe, resolve_recipe


def fields(**changes) -> dict:
    """What weights_formats.portable_fields hands the card, for a trained default recipe."""
    recipe = {**Recipe().__dict__}
    base = {"config": {"c3_table": True, "num_classes": 10}, "preprocessing": contract(INPUT_NORMALIZATION, 10),
            "metrics": {"test_accuracy": 0.9912, "per_class_accuracy": [0.99] * 10, "parameters": 60_806},
            "recipe": recipe, "data": {"test": 10_000}, "epoch": 10}  # fmt: skip
    return {**base, **changes}


def test_the_card_states_what_the_checkpoint_recorded():
    card = model_card(fields(), "lenet5-hub")
    assert card.startswith("---\nlibrary_name: pytorch\n")  # the Hub reads this header
    assert "LeCun's C3 connection table, 60,806 trainable parameters, trained for 10 epochs" in card
    assert "Test accuracy on the MNIST test set (10,000 images): **99.12 %**." in card
    assert "| 9 | 99.00 % |" in card and "| momentum | 0.95 |" in card
    assert "x = (x - 0.1307) / 0.3081" in card and "Input: `float32` tensor `batch x 1 x 32 x 32`" in card
    assert "hf upload USER/lenet5-mnist lenet5-hub ." in card and 'load_model("lenet5-hub")' in card
    assert "moving average" not in card and "{" + "folder}" not in card


def test_the_card_says_what_is_missing_or_different():
    recipe = {**Recipe().__dict__, "optimizer": "adamw", "ema_decay": 0.999, "limit": 500}
    card = model_card(fields(metrics={}, recipe=None, config={"c3_table": False}), "x")
    assert "recorded no test accuracy" in card and "Not recorded in the checkpoint" in card
    assert "a fully connected C3" in card and "trainable parameters" not in card
    card = model_card(fields(recipe=recipe), "x")
    assert "the first 500 images of the MNIST test set (500 images)" in card
    assert "AdamW on cross-entropy" in card and "exponential moving average of the trained ones (decay 0.999)" in card
    card = model_card(fields(recipe=resolve_recipe("fast", {}).__dict__), "x")
    assert "Muon (C5, F6) with AdamW (the rest) on cross-entropy" in card and "| rotation | 3.0 |" in card
