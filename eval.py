"""Evaluate LeNet-5 weights on the MNIST test set: overall and per-class accuracy, confusion
matrix, classification report, metrics.json and figures (the confusion matrix, the most
confidently wrong digits, the C1 filters and the C1/C3 feature maps of one test digit).

    python eval.py --weights checkpoints/lenet5.pt --data-dir ../shared/mnist --report-dir reports
"""

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.cli import (
    CliParser,
    UserError,
    add_device_flag,
    add_json_flag,
    add_limit_flag,
    add_report_dir_flag,
    add_weights_flag,
    number,
    one_line,
    print_results,
    run_cli,
)

import torch
from torch import nn
from torch.utils.data import DataLoader

from data import EVAL_BATCH_SIZE, add_data_args, data_source, eval_loader, preprocess
from helper import load_model
from support.devices import choose_device, place_batch
from support.figures import FIGURE, plot_confusion_matrix, plot_feature_maps, plot_filters, plot_misclassified
from support.files import OutputPlan, atomic_outputs, json_kind, json_object, json_text

MAX_EVAL_BATCH = 10_000  # images per evaluation batch at most: the whole MNIST test set in one


@torch.inference_mode()
def predict(model: nn.Module, loader: DataLoader, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits N x 10, labels N) for a whole loader, on the CPU."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for images, targets in loader:
        logits.append(model(place_batch(images, device)).float())
        labels.append(targets)
    model.train(was_training)
    return torch.cat(logits).cpu(), torch.cat(labels).cpu()


@torch.inference_mode()
def classify(model: nn.Module, digits: torch.Tensor, topk: int = 3) -> list[dict[str, Any]]:
    """uint8 N x 28 x 28 MNIST-style digits -> for each: prediction, its probability, the top-k, all ten."""
    device = next(model.parameters()).device
    probabilities = torch.softmax(model.eval()(place_batch(preprocess(digits), device)), dim=1).cpu()
    top = probabilities.topk(topk, dim=1)
    return [
        {
            "prediction": int(idx[0]),
            "probability": float(p[0]),
            "topk": [{"digit": int(d), "probability": float(q)} for d, q in zip(idx, p)],
            "probabilities": row.tolist(),
        }
        for idx, p, row in zip(top.indices, top.values, probabilities)
    ]


@dataclass(frozen=True)
class Evaluation:
    """What evaluate() found: per-image results and the metrics computed from them."""

    labels: torch.Tensor  # N, int64
    predictions: torch.Tensor  # N, int64
    probabilities: torch.Tensor  # N x 10
    confusion_matrix: list[list[int]]  # rows: true digit, columns: predicted
    per_class_accuracy: list[float]  # NaN for a digit with no test images
    classification_report: str
    classification_report_dict: dict[str, Any]

    @property
    def correct(self) -> int:
        return int((self.predictions == self.labels).sum())

    @property
    def total(self) -> int:
        return len(self.labels)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total

    def metrics(self) -> dict[str, Any]:
        """The JSON-ready numbers (NaN, which JSON lacks, becomes null)."""
        return {
            "accuracy": self.accuracy,
            "correct": self.correct,
            "total": self.total,
            "per_class_accuracy": [None if math.isnan(a) else a for a in self.per_class_accuracy],
            "confusion_matrix": self.confusion_matrix,
            "classification_report": self.classification_report_dict,
        }


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device | str) -> Evaluation:
    """Predictions and metrics; prints nothing (the callers report and plot)."""
    from sklearn.metrics import classification_report, confusion_matrix

    logits, labels = predict(model, loader, device)
    probabilities = torch.softmax(logits, dim=1)
    predictions = probabilities.argmax(dim=1)
    classes = range(logits.shape[1])  # the model's outputs: the ten digits
    matrix = confusion_matrix(labels.numpy(), predictions.numpy(), labels=classes)
    class_totals = matrix.sum(axis=1)
    per_class = [float(matrix[d, d] / class_totals[d]) if class_totals[d] else float("nan") for d in classes]
    report = dict(labels=list(classes), target_names=[str(d) for d in classes], digits=4, zero_division=0)
    return Evaluation(
        labels=labels,
        predictions=predictions,
        probabilities=probabilities,
        confusion_matrix=matrix.tolist(),
        per_class_accuracy=per_class,
        classification_report=classification_report(labels, predictions, **report),
        classification_report_dict=classification_report(labels, predictions, output_dict=True, **report),
    )


def format_report(result: Evaluation) -> str:
    """The write-up's text report: overall and per-class accuracy, confusion matrix, classification report."""
    lines = [f"Accuracy of the network on test images: {100 * result.accuracy:.2f}%"]
    lines += [f"Accuracy of {d}: {100 * acc:.2f}%" for d, acc in enumerate(result.per_class_accuracy)]
    lines += ["", "Confusion matrix (rows: true digit, columns: predicted digit):"]
    lines.append("true\\pred " + "".join(f"{d:>6}" for d in range(len(result.per_class_accuracy))))
    lines += [f"{d:>9} " + "".join(f"{n:>6}" for n in row) for d, row in enumerate(result.confusion_matrix)]
    lines += ["", "Classification report:", result.classification_report]
    return "\n".join(lines)


REPORT_METRICS = json_kind("a report's metrics", {"accuracy", "confusion_matrix", "classification_report"})
# What write_report writes, and what each file there may be for a run to replace it (its own earlier one).
REPORT_FILES = {"metrics.json": REPORT_METRICS, "confusion_matrix.png": FIGURE, "misclassified.png": FIGURE}
INSIDE_FILES = {"filters.png": FIGURE, "feature_maps.png": FIGURE}  # and inside_figures (eval.py's report)
HISTORY_FILES = {"loss.png": FIGURE, "accuracy.png": FIGURE}  # and main.py's history figures
# Every file a report folder may hold. A report replaces the whole set: the files an earlier report listed in its
# metrics.json that this one does not write (eval.py after main.py: the training curves) are removed, so the folder
# never describes two runs; a figure written there by another command (predict.py --out) is no report's, and stays.
REPORT_FOLDER = REPORT_FILES | INSIDE_FILES | HISTORY_FILES


def write_report(
    result: Evaluation,
    images: torch.Tensor,
    out_dir: Path,
    extra: dict[str, Any] | None = None,
    figures: dict[str, Callable[[Path], None]] | None = None,
) -> list[Path]:
    """metrics.json, confusion_matrix.png and misclassified.png in out_dir, and `figures` (file name: a function
    that draws it at a path); returns the paths written. They replace an earlier report's files all at once,
    or, when any cannot be written (a full disk), none does: a report folder never mixes two runs.

    images: the evaluated images, in loader order (for the misclassified grid).
    """
    earlier = _report_files(out_dir)
    writers = {
        "metrics.json": lambda path: path.write_bytes(json_text(metrics).encode()),
        "confusion_matrix.png": lambda path: plot_confusion_matrix(result.confusion_matrix, path),
        "misclassified.png": lambda path: plot_misclassified(
            images, result.labels, result.predictions, result.probabilities, path
        ),
        **(figures or {}),
    }
    metrics = {**result.metrics(), **(extra or {}), "files": sorted(writers)}  # (the next report removes what it lists)
    paths = [out_dir / name for name in writers]
    with atomic_outputs(*paths) as temps:
        for write, tmp in zip(writers.values(), temps):
            write(tmp)
    for name in earlier - set(writers):  # (only once the new files are in place; only this program's own)
        if REPORT_FOLDER[name].ours(out_dir / name):
            (out_dir / name).unlink(missing_ok=True)
    return paths


def _report_files(out_dir: Path) -> set[str]:
    """The files of the report in out_dir, as its metrics.json lists them (none: no report, or one from before the
    list was kept)."""
    metrics = out_dir / "metrics.json"
    listed = (json_object(metrics) or {}).get("files") if REPORT_METRICS.ours(metrics) else None
    return {name for name in listed if name in REPORT_FOLDER} if isinstance(listed, list) else set()


def inside_figures(model: nn.Module, digit: torch.Tensor, label: int) -> dict[str, Callable[[Path], None]]:
    """filters.png (the C1 kernels) and feature_maps.png (C1 and C3 of one uint8 28x28 digit), for write_report."""

    @torch.inference_mode()
    def feature_maps(path: Path) -> None:
        maps = model.feature_maps(place_batch(preprocess(digit), next(model.parameters()).device))
        plot_feature_maps(maps, digit, f"input ({label})", path)

    return {"filters.png": lambda path: plot_filters(model, path), "feature_maps.png": feature_maps}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CliParser(__doc__)
    add_data_args(p)
    add_weights_flag(p)
    add_report_dir_flag(p)
    add_device_flag(p)
    add_json_flag(p)
    add_limit_flag(p)
    batch = f"evaluation batch size (at most {MAX_EVAL_BATCH:,}, the MNIST test set)"
    p.add_argument("--batch-size", type=number(int, 1, MAX_EVAL_BATCH), default=EVAL_BATCH_SIZE, help=batch)
    p.add_argument("--index", type=number(int, 0), default=0, help="the test digit whose feature maps are drawn")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = choose_device(args.device)
    OutputPlan({"the checkpoint given as --weights": args.weights}).folder(
        args.report_dir, "--report-dir", REPORT_FOLDER
    )
    model, checkpoint = load_model(args.weights, device)
    data = data_source(args).open()
    images, labels = data.test_images[: args.limit], data.test_labels[: args.limit]
    if args.index >= len(labels):
        raise UserError(f"--index {args.index} must be below {len(labels)}, the number of test images evaluated")
    result = evaluate(model, eval_loader(images, labels, device, args.batch_size), device)
    extra = {"weights": str(args.weights), "epoch": checkpoint.epoch}
    figures = inside_figures(model, images[args.index], int(labels[args.index]))
    paths = write_report(result, images, args.report_dir, extra, figures)
    if args.json:
        print_results(json_text({**result.metrics(), **extra, "wrote": [str(p) for p in paths]}))
    else:
        print(format_report(result))
        print("wrote:", *[f"  {one_line(str(p))}" for p in paths], sep="\n")


if __name__ == "__main__":
    run_cli(main)
