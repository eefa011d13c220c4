"""Every figure the project draws, as plain functions that write a PNG (matplotlib, Agg backend).

The callers decide what to plot; nothing here trains, evaluates or parses flags.
"""

from pathlib import Path
from typing import Any

import torch

from support.files import atomic_output


def pyplot():
    """matplotlib with the file-only Agg backend, imported on first use (keeps start-up fast)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(fig)


def plot_loss(step_losses: list[float], steps_per_epoch: int, path: Path) -> None:
    """The training loss at every step, with each epoch's mean (the write-up's loss plot)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = (torch.arange(1, len(step_losses) + 1) / steps_per_epoch).numpy()
    ax.plot(steps, step_losses, lw=0.5, alpha=0.5, label="per step")
    epochs = len(step_losses) // steps_per_epoch
    means = torch.tensor(step_losses[: epochs * steps_per_epoch]).reshape(epochs, -1).mean(1)
    ax.plot(range(1, epochs + 1), means.numpy(), "o-", label="epoch mean")
    ax.set(xlabel="epoch", ylabel="cross-entropy loss", yscale="log", title="LeNet-5 training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_accuracy(epochs: list[int], train: list[float], held_out: list[float], split: str, path: Path) -> None:
    """Train and held-out accuracy (fractions) per epoch."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(epochs, [100 * a for a in train], "o-", label="train (augmented, during the epoch)")
    ax.plot(epochs, [100 * a for a in held_out], "o-", label=split)
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title="LeNet-5 accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_confusion_matrix(matrix: list[list[int]], path: Path) -> None:
    """Heatmap with counts; rows are the true digit, columns the prediction."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    cm = torch.tensor(matrix, dtype=torch.float64)
    image = ax.imshow(torch.log1p(cm).numpy(), cmap="Blues")  # log scale: the diagonal would drown the errors
    for (i, j), count in zip(torch.cartesian_prod(torch.arange(10), torch.arange(10)).tolist(), cm.flatten()):
        dark = image.norm(image.get_array()[i, j]) > 0.6
        ax.text(j, i, f"{int(count)}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted digit", ylabel="true digit", title="Confusion matrix")
    save_figure(fig, path)


def plot_misclassified(
    images: torch.Tensor,
    labels: torch.Tensor,
    predictions: torch.Tensor,
    probabilities: torch.Tensor,
    path: Path,
    count: int = 24,
) -> None:
    """A grid of the most confidently wrong predictions: true label, prediction and its probability.

    images: the evaluated images in loader order (N x H x W, or N x 1 x H x W).
    """
    plt = pyplot()
    wrong = (predictions != labels).nonzero().flatten()
    confidence = probabilities[wrong, predictions[wrong]]
    worst = wrong[confidence.argsort(descending=True)][:count]
    cols = 8
    rows = max(1, -(-len(worst) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.4, rows * 1.7), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, worst.tolist()):
        ax.imshow(images[i].reshape(images.shape[-2:]).cpu().numpy(), cmap="gray")
        p = probabilities[i, predictions[i]]
        ax.set_title(f"true {labels[i]}\npred {predictions[i]} ({p:.0%})", fontsize=8)
    fig.suptitle(f"Most confidently wrong: {len(wrong)} of {len(labels)} test images misclassified")
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


def plot_feature_maps(maps: dict[str, torch.Tensor], raw: torch.Tensor, title: str, path: Path) -> None:
    """The input digit, its 6 C1 maps (28x28) and 16 C3 maps (10x10), from LeNet5.feature_maps of one image."""
    plt = pyplot()
    c1, c3 = maps["C1"][0].cpu(), maps["C3"][0].cpu()
    fig, axes = plt.subplots(3, 8, figsize=(12, 5))
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].imshow(raw.cpu().numpy(), cmap="gray")
    axes[0, 0].set_title(title, fontsize=9)
    for k in range(6):
        axes[0, k + 2].imshow(c1[k].numpy(), cmap="viridis", vmin=-1, vmax=1)
        axes[0, k + 2].set_title(f"C1 map {k}", fontsize=9)
    for k in range(16):
        ax = axes[1 + k // 8, k % 8]
        ax.imshow(c3[k].numpy(), cmap="viridis", vmin=-1, vmax=1)
        ax.set_title(f"C3 map {k}", fontsize=9)
    fig.suptitle("Feature maps after tanh (yellow +1, purple -1)")
    save_figure(fig, path)


def plot_predictions(rows: list[dict[str, Any]], path: Path) -> None:
    """One row per classified image: the input ("grey"), the 28x28 the network saw ("digit"), the probabilities."""
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 2.6 * len(rows)), squeeze=False, layout="constrained")
    for (ax_in, ax_digit, ax_bar), r in zip(axes, rows):
        ax_in.imshow(r["grey"].numpy(), cmap="gray", vmin=0, vmax=255)
        ax_in.set_title(r["name"], fontsize=9)
        ax_digit.imshow(r["digit"].numpy(), cmap="gray", vmin=0, vmax=255)
        ax_digit.set_title("as the network sees it (28x28)", fontsize=9)
        for ax in (ax_in, ax_digit):
            ax.axis("off")
        colours = ["tab:orange" if d == r["prediction"] else "tab:blue" for d in range(10)]
        ax_bar.bar(range(10), r["probabilities"], color=colours)
        ax_bar.set(xticks=range(10), ylim=(0, 1), title=f"prediction {r['prediction']} ({r['probability']:.1%})")
    save_figure(fig, path)
