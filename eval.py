"""Evaluate LeNet-5 weights on the MNIST test set: overall and per-class accuracy,
confusion matrix, classification report, metrics.json and figures.

    python eval.py --weights checkpoints/lenet5.pt --data-dir ../shared/mnist --out reports
"""

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from data import add_data_args, eval_loader, open_mnist
from helper import (
    DEFAULT_CHECKPOINT,
    DEFAULT_REPORT_DIR,
    CliParser,
    load_model,
    plot_confusion_matrix,
    resolve_device,
    run_cli,
    write_json,
)
from visualize import plot_misclassified

CLASSES = [str(d) for d in range(10)]


@torch.inference_mode()
def predict(model: nn.Module, loader: DataLoader, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits N x 10, labels N) for a whole loader, on the CPU."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for images, targets in loader:
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        logits.append(model(images).float())
        labels.append(targets)
    model.train(was_training)
    return torch.cat(logits).cpu(), torch.cat(labels).cpu()


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device | str) -> dict[str, Any]:
    """Predictions and metrics; prints nothing (the callers report and plot)."""
    from sklearn.metrics import classification_report, confusion_matrix

    logits, labels = predict(model, loader, device)
    probabilities = torch.softmax(logits, dim=1)
    predictions = probabilities.argmax(dim=1)
    matrix = confusion_matrix(labels.numpy(), predictions.numpy(), labels=range(10))
    class_totals = matrix.sum(axis=1)
    per_class = [float(matrix[d, d] / class_totals[d]) if class_totals[d] else float("nan") for d in range(10)]
    report_kwargs = dict(labels=list(range(10)), target_names=CLASSES, digits=4, zero_division=0)
    return {
        "predictions": predictions,
        "labels": labels,
        "probabilities": probabilities,
        "accuracy": float((predictions == labels).double().mean()),
        "correct": int((predictions == labels).sum()),
        "total": len(labels),
        "per_class_accuracy": per_class,
        "confusion_matrix": matrix.tolist(),
        "classification_report": classification_report(labels, predictions, **report_kwargs),
        "classification_report_dict": classification_report(labels, predictions, output_dict=True, **report_kwargs),
    }


def format_report(results: dict[str, Any]) -> str:
    """The write-up's text report: overall and per-class accuracy, confusion matrix, classification report."""
    lines = [f"Accuracy of the network on test images: {100 * results['accuracy']:.2f}%"]
    lines += [f"Accuracy of {d}: {100 * acc:.2f}%" for d, acc in enumerate(results["per_class_accuracy"])]
    lines += ["", "Confusion matrix (rows: true digit, columns: predicted digit):"]
    lines.append("true\\pred " + "".join(f"{d:>6}" for d in range(10)))
    lines += [f"{d:>9} " + "".join(f"{n:>6}" for n in row) for d, row in enumerate(results["confusion_matrix"])]
    lines += ["", "Classification report:", results["classification_report"]]
    return "\n".join(lines)


def write_report(
    results: dict[str, Any], images: torch.Tensor, out_dir: Path, extra: dict[str, Any] | None = None
) -> list[Path]:
    """metrics.json, confusion_matrix.png and misclassified.png in out_dir; returns the paths written.

    images: the evaluated images, in loader order (for the misclassified grid).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {k: results[k] for k in ("accuracy", "correct", "total", "per_class_accuracy", "confusion_matrix")}
    metrics["classification_report"] = results["classification_report_dict"]
    metrics.update(extra or {})
    paths = [out_dir / "metrics.json", out_dir / "confusion_matrix.png", out_dir / "misclassified.png"]
    write_json(metrics, paths[0])
    plot_confusion_matrix(results["confusion_matrix"], paths[1])
    plot_misclassified(results, images, paths[2])
    return paths


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CliParser(__doc__)
    add_data_args(p)
    p.add_argument("--weights", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint written by main.py")
    p.add_argument("--out", type=Path, default=DEFAULT_REPORT_DIR, help="folder for metrics.json and the figures")
    p.add_argument("--batch-size", type=int, default=500, help="evaluation batch size")
    p.add_argument("--limit", type=int, default=None, help="use only the first N test images")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="where to run")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    model, checkpoint = load_model(args.weights, device)
    data = open_mnist(args.data_dir, args.cache_dir, args.allow_custom_data, not args.no_download)
    loader = eval_loader(data.test_images[: args.limit], data.test_labels[: args.limit], args.batch_size, device)
    results = evaluate(model, loader, device)
    print(format_report(results))
    paths = write_report(
        results, loader.dataset.images, args.out, {"weights": str(args.weights), "epoch": checkpoint.get("epoch")}
    )
    print("wrote:", *[f"  {p}" for p in paths], sep="\n")


if __name__ == "__main__":
    run_cli(main)
