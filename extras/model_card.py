"""The model card: the README.md of a Hugging Face Hub export (extras/exports.py), written from what
the checkpoint recorded: what the model is, its measured accuracy, how it was trained, what it expects,
what it is (not) for, how to load and publish it. Every value taken from a checkpoint's metadata is
escaped, so that no text in a file becomes markup (HTML, links, tables) on the Hub's page."""

import html
import json
import re
import shlex
from typing import Any

PUBLISH_COMMAND = "hf upload USER/lenet5-mnist {folder} ."
# The card's last line: says who wrote it (export.py knows its own earlier export by what config.json records).
CARD_MARK = (
    "<!-- written by the lenet5-mnist project's export.py; the next export to this folder replaces it, unless a "
    "file in it was changed since -->"
)


def publish_command(folder: str) -> str:
    """The command that uploads `folder` to the Hub, the folder shell-quoted (a space in it stays one word)."""
    return PUBLISH_COMMAND.format(folder=shlex.quote(folder))


def text(value: Any) -> str:
    """A metadata value as plain text in Markdown: HTML escaped, Markdown's punctuation backslashed, one line."""
    escaped = html.escape(" ".join(str(value).split()), quote=False)
    return re.sub(r"([\\`*_{}\[\]()#+!|~>-])", r"\\\1", escaped)


def model_card(fields: dict[str, Any], folder_name: str) -> str:
    """README.md for the Hub: what the model is, its measured accuracy, how it was trained, what it
    expects, what it is (not) for, how to load and publish it."""
    sections = [
        _card_header(fields),
        _card_results(fields),
        _card_recipe(fields.get("recipe")),
        _card_preprocessing(fields["preprocessing"]),
        _CARD_USE,
        _CARD_LOAD.replace("{folder}", shlex.quote(folder_name))
        .replace('"{python_folder}"', json.dumps(folder_name))
        .replace("{publish}", publish_command(folder_name)),
        CARD_MARK,
    ]
    return "\n\n".join(sections).strip() + "\n"


def _card_header(fields: dict[str, Any]) -> str:
    c3 = "LeCun's C3 connection table" if fields["config"].get("c3_table", True) else "a fully connected C3"
    parameters, epoch = fields["metrics"].get("parameters"), fields.get("epoch", 0)
    counted = f", {parameters:,} trainable parameters" if type(parameters) is int else ""
    network = (
        "as the 1998 paper built it: its scaled tanh, trainable subsampling, "
        "and ten RBF units over fixed 7x12 digit bitmaps as the output (the logits are minus their penalties); with"
        if fields["config"].get("lecun1998")
        else "with tanh units, average pooling and"
    )
    return (
        "---\nlibrary_name: pytorch\npipeline_tag: image-classification\n"
        "tags:\n- mnist\n- lenet-5\n- image-classification\ndatasets:\n- ylecun/mnist\nmetrics:\n- accuracy\n---\n\n"
        "# LeNet-5 trained on MNIST\n\n"
        f"LeNet-5 (LeCun et al., 1998) {network} {c3}{counted}, trained for "
        f"{epoch if type(epoch) is int else '?'} epochs by the lenet5-mnist project's `main.py`. It reads a 32x32 "
        "grey digit and returns 10 logits, one per digit."
    )


def _card_results(fields: dict[str, Any]) -> str:
    metrics, recipe = fields["metrics"], fields.get("recipe") or {}
    accuracy, per_class = metrics.get("test_accuracy"), metrics.get("per_class_accuracy")
    if type(accuracy) not in (int, float):
        return "## Results\n\nThe checkpoint this was exported from recorded no test accuracy."
    limit, total = recipe.get("limit"), (fields.get("data") or {}).get("test")
    limit = limit if type(limit) is int else None
    on = f"the first {limit:,} images of the MNIST test set" if limit else "the MNIST test set"
    on += f" ({min(limit or total, total):,} images)" if type(total) is int else ""
    lines = ["## Results", "", f"Test accuracy on {on}: **{100 * accuracy:.2f} %**."]
    if isinstance(per_class, list) and len(per_class) == 10:
        lines += ["", "| digit | accuracy |", "|---|---|"]
        lines += [
            f"| {d} | {f'{100 * a:.2f} %' if type(a) in (int, float) else '-'} |" for d, a in enumerate(per_class)
        ]
    return "\n".join(lines)


def _card_recipe(recipe: dict[str, Any] | None) -> str:
    if not recipe:
        return "## Training recipe\n\nNot recorded in the checkpoint this was exported from."
    rows = [f"| {text(name)} | {text(value)} |" for name, value in recipe.items()]
    optimizer = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "muon": "Muon (C5, F6) with AdamW (the rest)",
                 "sdlm": "Stochastic diagonal Levenberg-Marquardt"}.get(recipe.get("optimizer"), "SGD")  # fmt: skip
    loss = "the 1998 paper's MAP criterion" if recipe.get("loss") == "map" else "cross-entropy"
    how = f"{optimizer} on {loss}, the learning rate set per step."
    if recipe.get("ema_decay"):
        how += (
            f" The weights are an exponential moving average of the trained ones (decay {text(recipe['ema_decay'])})."
        )
    return "\n".join(["## Training recipe", "", how, "", "| setting | value |", "|---|---|", *rows])


def _card_preprocessing(preprocessing: dict[str, Any]) -> str:
    steps = "\n".join(f"{i}. {step}" for i, step in enumerate(preprocessing.get("preprocessing", []), start=1))
    shape = " x ".join(str(s) for s in preprocessing.get("input", {}).get("shape", []))
    return (
        f"## Preprocessing\n\nInput: `float32` tensor `{shape}`; output: `batch x 10` logits "
        "(softmax gives probabilities).\n\n" + steps
    )


_CARD_USE = """## Intended use and limits

- For learning and demonstrations: a small, fast classifier of single handwritten digits.
- It expects what MNIST holds: one centred, size-normalized digit, light ink on a black background.
  Anything else (photos, several digits, letters, dark ink on white without inverting) still gets one
  of the ten digits, often with high confidence: it has no "not a digit" answer.
- MNIST's writers were US Census Bureau employees and high-school students; other handwriting
  styles are less well recognized. Its test accuracy says nothing about scanned forms or cheques:
  measure on your own data before relying on it."""

_CARD_LOAD = """## How to load

With the lenet5-mnist project (checks the file, then rebuilds the model; no network):

```bash
python eval.py --weights {folder}
python predict.py my_digit.png --weights {folder}
```

```python
from helper import load_model

model, checkpoint = load_model("{python_folder}")  # LeNet5 in eval mode, and its config, metrics and recipe
```

Anywhere else, with `LeNet5.py` from the project (it needs only torch) and huggingface_hub's mixin:

```python
from huggingface_hub import PyTorchModelHubMixin

from LeNet5 import LeNet5


class HubLeNet5(LeNet5, PyTorchModelHubMixin):
    pass


model = HubLeNet5.from_pretrained("{python_folder}").eval()  # or "USER/lenet5-mnist" once published
```

## Publish

```bash
{publish}
```"""
