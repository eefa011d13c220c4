"""extras/model_card.py: the Hub export's README.md says what the checkpoint recorded, and nothing a file says
becomes markup on the page. The fields come through the production wiring: a checkpoint saved by helper.py,
read back, and handed over as extras/exports.py hands it."""

import pytest
from conftest import save_weights

from extras.exports import _fields
from extras.model_card import CARD_MARK, model_card, publish_command
from helper import load_checkpoint
from LeNet5 import LeNet5
from support.recipes import Recipe, resolve_recipe

TRAINED = {"test_accuracy": 0.9912, "per_class_accuracy": [0.99] * 10, "parameters": 60_806}


def card(tmp_path, model: LeNet5 | None = None, metrics: dict | None = None, recipe: dict | None = None,
         folder: str = "lenet5-hub") -> str:  # fmt: skip
    metrics = dict(TRAINED if metrics is None else metrics)
    if recipe is not None:
        metrics["recipe"] = recipe
    path = save_weights(tmp_path / "m.pt", model or LeNet5(), metrics)
    return model_card(_fields(load_checkpoint(path)), folder)


def test_the_card_states_what_the_checkpoint_recorded(tmp_path):
    text = card(tmp_path, recipe={**Recipe().__dict__})
    assert text.startswith("---\nlibrary_name: pytorch\n")  # the Hub reads this header
    assert "LeCun's C3 connection table, 60,806 trainable parameters" in text
    assert "Test accuracy on the MNIST test set: **99.12 %**." in text
    assert "| 9 | 99.00 % |" in text and "| momentum | 0.95 |" in text
    assert "x = (x - 0.1307) / 0.3081" in text and "Input: `float32` tensor `batch x 1 x 32 x 32`" in text
    assert "hf upload USER/lenet5-mnist lenet5-hub ." in text and 'load_model("lenet5-hub")' in text
    assert "moving average" not in text and "{" + "folder}" not in text
    assert text.rstrip().endswith(CARD_MARK)  # how export.py knows the folder as its own


def test_the_card_says_what_is_missing_or_different(tmp_path):
    text = card(tmp_path, LeNet5(c3_table=False), metrics={})
    assert "recorded no test accuracy" in text and "Not recorded in the checkpoint" in text
    assert "a fully connected C3" in text and "trainable parameters" not in text
    recipe = {**Recipe().__dict__, "optimizer": "adamw", "ema_decay": 0.999, "limit": 500}
    text = card(tmp_path, recipe=recipe)
    assert "the first 500 images of the MNIST test set" in text
    assert "AdamW on cross-entropy" in text and "exponential moving average of the trained ones (decay 0.999)" in text
    text = card(tmp_path, recipe=resolve_recipe("fast", {}).__dict__)
    assert "Muon (C5, F6) with AdamW (the rest) on cross-entropy" in text and "| rotation | 3.0 |" in text
    text = card(tmp_path, LeNet5(lecun1998=True), recipe=resolve_recipe("lecun1998", {}).__dict__)
    assert "as the 1998 paper built it" in text and "tanh units, average pooling" not in text
    assert "Stochastic diagonal Levenberg-Marquardt on the 1998 paper's MAP criterion" in text


@pytest.mark.parametrize(
    "value, shown",
    [
        ("<script>alert(1)</script>", "&lt;script&gt;alert\\(1\\)&lt;/script&gt;"),
        ("[click](http://x.example)", "\\[click\\]\\(http://x.example\\)"),
        ("a | b\n| c", "a \\| b \\| c"),  # no extra table cells, no new line
    ],
)
def test_text_from_the_file_never_becomes_markup(tmp_path, value, shown):
    text = card(tmp_path, recipe={**Recipe().__dict__, "name": value})
    assert f"| name | {shown} |" in text and value not in text


def test_a_folder_name_stays_a_word_in_the_commands(tmp_path):
    text = card(tmp_path, folder="my hub; rm -rf ~")
    assert "python eval.py --weights 'my hub; rm -rf ~'" in text and 'load_model("my hub; rm -rf ~")' in text
    assert f"{publish_command('my hub; rm -rf ~')}\n" in text and "lenet5-mnist 'my hub; rm -rf ~' ." in text
