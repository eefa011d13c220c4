"""The model card: the README.md of a Hugging Face Hub export (weights_formats.write_hub), written from what
the checkpoint recorded: what the model is, its measured accuracy, how it was trained, what it expects,
what it is (not) for, how to load and publish it."""

from typing import Any

PUBLISH_COMMAND = "hf upload USER/lenet5-mnist {folder} ."


def model_card(fields: dict[str, Any], folder_name: str) -> str:
    """README.md for the Hub: what the model is, its measured accuracy, how it was trained, what it
    expects, what it is (not) for, how to load and publish it."""
    sections = [
        _card_header(fields),
        _card_results(fields),
        _card_recipe(fields.get("recipe")),
        _card_preprocessing(fields["preprocessing"]),
        _CARD_USE,
        _CARD_LOAD.replace("{folder}", folder_name).replace("{publish}", PUBLISH_COMMAND.format(folder=folder_name)),
    ]
    return "\n\n".join(sections).strip() + "\n"


def _card_header(fields: dict[str, Any]) -> str:
    c3 = "LeCun's C3 connection table" if fields["config"].get("c3_table", True) else "a fully connected C3"
    parameters = fields["metrics"].get("parameters")
    counted = f", {parameters:,} trainable parameters" if isinstance(parameters, int) else ""
    return (
        "---\nlibrary_name: pytorch\npipeline_tag: image-classification\n"
        "tags:\n- mnist\n- lenet-5\n- image-classification\ndatasets:\n- ylecun/mnist\nmetrics:\n- accuracy\n---\n\n"
        "# LeNet-5 trained on MNIST\n\n"
        f"LeNet-5 (LeCun et al., 1998) with tanh units, average pooling and {c3}{counted}, trained for "
        f"{fields.get('epoch', 0)} epochs by the lenet5-mnist project's `main.py`. It reads a 32x32 "
        "grey digit and returns 10 logits, one per digit."
    )


def _card_results(fields: dict[str, Any]) -> str:
    metrics, recipe = fields["metrics"], fields.get("recipe") or {}
    accuracy, per_class = metrics.get("test_accuracy"), metrics.get("per_class_accuracy")
    if not isinstance(accuracy, int | float):
        return "## Results\n\nThe checkpoint this was exported from recorded no test accuracy."
    limit, total = recipe.get("limit"), (fields.get("data") or {}).get("test")
    on = f"the first {limit:,} images of the MNIST test set" if limit else "the MNIST test set"
    on += f" ({min(limit or total, total):,} images)" if isinstance(total, int) else ""
    lines = ["## Results", "", f"Test accuracy on {on}: **{100 * accuracy:.2f} %**."]
    if isinstance(per_class, list) and len(per_class) == 10:
        lines += ["", "| digit | accuracy |", "|---|---|"]
        lines += [f"| {d} | {'-' if a is None else f'{100 * a:.2f} %'} |" for d, a in enumerate(per_class)]
    return "\n".join(lines)


def _card_recipe(recipe: dict[str, Any] | None) -> str:
    if not recipe:
        return "## Training recipe\n\nNot recorded in the checkpoint this was exported from."
    rows = [f"| {name} | {value} |" for name, value in recipe.items()]
    optimizer = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "muon": "Muon (C5, F6) with AdamW (the rest)"}.get(
        recipe.get("optimizer"), "SGD"
    )
    how = f"{optimizer} on cross-entropy, the learning rate set per step."
    if recipe.get("ema_decay"):
        how += f" The weights are an exponential moving average of the trained ones (decay {recipe['ema_decay']})."
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

model, checkpoint = load_model("{folder}")  # LeNet5 in eval mode, and its config, metrics and recipe
```

Anywhere else, with `LeNet5.py` from the project (it needs only torch) and huggingface_hub's mixin:

```python
from huggingface_hub import PyTorchModelHubMixin

from LeNet5 import LeNet5


class HubLeNet5(LeNet5, PyTorchModelHubMixin):
    pass


model = HubLeNet5.from_pretrained("{folder}").eval()  # or "USER/lenet5-mnist" once published
```

## Publish

```bash
{publish}
```"""
