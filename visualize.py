"""A look inside a trained LeNet-5: the C1 filters, the C1/C3 feature maps of one test digit,
and the test images it gets most confidently wrong.

    python visualize.py --weights checkpoints/lenet5.pt --index 0 --out reports
"""

import argparse
from pathlib import Path
from typing import Any

import torch

from data import add_data_args, open_mnist, preprocess
from helper import (
    DEFAULT_CHECKPOINT,
    DEFAULT_REPORT_DIR,
    CliParser,
    UserError,
    load_model,
    pyplot,
    run_cli,
    save_figure,
)


def plot_misclassified(results: dict[str, Any], images: torch.Tensor, path: Path, count: int = 24) -> None:
    """A grid of the most confidently wrong predictions: true label, prediction and its probability.

    images: the evaluated images in loader order (N x H x W, or N x 1 x H x W).
    """
    plt = pyplot()
    wrong = (results["predictions"] != results["labels"]).nonzero().flatten()
    confidence = results["probabilities"][wrong, results["predictions"][wrong]]
    worst = wrong[confidence.argsort(descending=True)][:count]
    cols = 8
    rows = max(1, -(-len(worst) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.4, rows * 1.7), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, worst.tolist()):
        ax.imshow(images[i].reshape(images.shape[-2:]).cpu().numpy(), cmap="gray")
        p = results["probabilities"][i, results["predictions"][i]]
        ax.set_title(f"true {results['labels'][i]}\npred {results['predictions'][i]} ({p:.0%})", fontsize=8)
    fig.suptitle(f"Most confidently wrong: {len(wrong)} of {len(results['labels'])} test images misclassified")
    save_figure(fig, path)


def plot_filters(model: torch.nn.Module, path: Path) -> None:
    """The six 5x5 C1 kernels, each on its own symmetric colour scale (red +, blue -)."""
    plt = pyplot()
    weights = model.c1.weight.detach().cpu()[:, 0]  # 6 x 5 x 5
    fig, axes = plt.subplots(1, 6, figsize=(9, 1.9))
    for k, (ax, kernel) in enumerate(zip(axes, weights)):
        limit = kernel.abs().max().item()
        ax.imshow(kernel.numpy(), cmap="bwr", vmin=-limit, vmax=limit)
        ax.set_title(f"C1 map {k}", fontsize=9)
        ax.axis("off")
    fig.suptitle("C1 filters (5x5)")
    save_figure(fig, path)


@torch.inference_mode()
def plot_feature_maps(model: torch.nn.Module, image: torch.Tensor, raw: torch.Tensor, label: int, path: Path) -> None:
    """The input digit, its 6 C1 maps (28x28) and 16 C3 maps (10x10). image: 1 x 32 x 32 preprocessed."""
    plt = pyplot()
    maps = model.feature_maps(image.unsqueeze(0).to(next(model.parameters()).device))
    c1, c3 = maps["C1"][0].cpu(), maps["C3"][0].cpu()
    fig, axes = plt.subplots(3, 8, figsize=(12, 5))
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].imshow(raw.numpy(), cmap="gray")
    axes[0, 0].set_title(f"input ({label})", fontsize=9)
    for k in range(6):
        axes[0, k + 2].imshow(c1[k].numpy(), cmap="viridis", vmin=-1, vmax=1)
        axes[0, k + 2].set_title(f"C1 map {k}", fontsize=9)
    for k in range(16):
        ax = axes[1 + k // 8, k % 8]
        ax.imshow(c3[k].numpy(), cmap="viridis", vmin=-1, vmax=1)
        ax.set_title(f"C3 map {k}", fontsize=9)
    fig.suptitle("Feature maps after tanh (yellow +1, purple -1)")
    save_figure(fig, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CliParser(__doc__)
    add_data_args(p)
    p.add_argument("--weights", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint written by main.py")
    p.add_argument("--index", type=int, default=0, help="which test image to show the feature maps of")
    p.add_argument("--out", type=Path, default=DEFAULT_REPORT_DIR, help="folder for filters.png and feature_maps.png")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model, _ = load_model(args.weights)
    data = open_mnist(args.data_dir, args.cache_dir, args.allow_custom_data, not args.no_download)
    if not 0 <= args.index < len(data.test_labels):
        raise UserError(f"--index {args.index} must be between 0 and {len(data.test_labels) - 1}")
    raw = data.test_images[args.index]
    paths = [args.out / "filters.png", args.out / "feature_maps.png"]
    plot_filters(model, paths[0])
    plot_feature_maps(model, preprocess(raw)[0], raw, int(data.test_labels[args.index]), paths[1])
    print("wrote:", *[f"  {p}" for p in paths], sep="\n")


if __name__ == "__main__":
    run_cli(main)
