"""Every figure the project draws, as plain functions that write a PNG (matplotlib, Agg backend).

The callers decide what to plot; nothing here trains, evaluates or parses flags.
"""

import os
import struct
import zlib
from pathlib import Path
from typing import Any

import torch

from support.files import Kind, atomic_output

# Every PNG the package writes carries this text chunk: how a run tells its own earlier figure (replaced) from a
# file of the user's that only has the same name (refused). Figures written before the mark existed have none.
MARK_KEY, MARK_VALUE = "lenet5-mnist", "a figure this program wrote"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _matplotlib():
    """matplotlib with the file-only Agg backend, imported on first use (keeps start-up fast). The package only
    writes files, so a backend named by the environment (Jupyter's inline one, or a misspelt one, which fails
    matplotlib's own import) must not decide."""
    os.environ["MPLBACKEND"] = "agg"
    import matplotlib

    matplotlib.use("Agg")
    return matplotlib


def pyplot():
    """matplotlib.pyplot, on the Agg backend."""
    _matplotlib()
    import matplotlib.pyplot as plt

    return plt


def viridis():
    """The viridis colour map, on the Agg backend."""
    return _matplotlib().colormaps["viridis"]


def save_figure(fig, path: Path) -> None:
    """The figure as a PNG, written atomically. Each figure lays itself out (layout="constrained") when it is
    made: bbox_inches="tight" would draw it twice."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, metadata={MARK_KEY: MARK_VALUE})
    pyplot().close(fig)


def marked_png(png: bytes) -> bytes:
    """A PNG made elsewhere (a browser's screenshot) with the mark save_figure gives every figure: a tEXt chunk
    after the header chunk, where the PNG specification allows it."""
    if not png.startswith(_PNG_SIGNATURE) or png[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    header_end = 8 + 8 + struct.unpack(">I", png[8:12])[0] + 4
    body = b"tEXt" + MARK_KEY.encode("latin-1") + b"\0" + MARK_VALUE.encode("latin-1")
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return png[:header_end] + chunk + png[header_end:]


def is_own_figure(path: Path) -> bool:
    """Whether `path` is a PNG with the package's mark among its chunks before the image data."""
    wanted = MARK_KEY.encode("latin-1") + b"\0" + MARK_VALUE.encode("latin-1")
    try:
        with open(path, "rb") as file:
            if file.read(8) != _PNG_SIGNATURE:
                return False
            for _ in range(100):  # (the mark comes in the first few chunks; a damaged file ends the walk)
                head = file.read(8)
                if len(head) < 8 or head[4:] in (b"IDAT", b"IEND"):
                    return False
                length = struct.unpack(">I", head[:4])[0]
                if head[4:] == b"tEXt" and length == len(wanted):
                    if file.read(length) == wanted:
                        return True
                    file.seek(4, 1)
                else:
                    file.seek(length + 4, 1)
    except OSError:
        return False
    return False


FIGURE = Kind("a figure", is_own_figure)


def printable(name: str) -> str:
    """A file name as a figure can draw it: the bytes of a name that is not UTF-8 (os.fsdecode's surrogates, which
    matplotlib refuses) as escapes, as `ls -b` shows them."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def mosaic(images: torch.Tensor, columns: int, gap: int = 4, fill: float = float("nan")) -> torch.Tensor:
    """K x H x W images -> one (rows * (H + gap) - gap) x (columns * (W + gap) - gap) picture, NaN between them
    (drawn as the background): one imshow for a whole grid, far cheaper than a subplot per image."""
    count, height, width = images.shape
    rows = max(1, -(-count // columns))
    grid = torch.full((rows * (height + gap) - gap, columns * (width + gap) - gap), fill)
    for k in range(count):
        row, col = divmod(k, columns)
        grid[
            row * (height + gap) : row * (height + gap) + height, col * (width + gap) : col * (width + gap) + width
        ] = images[k]
    return grid


def plot_loss(step_losses: list[float], steps_per_epoch: int, path: Path) -> None:
    """The training loss at every step, with each epoch's mean (the write-up's loss plot)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
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
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    ax.plot(epochs, [100 * a for a in train], "o-", label="train (augmented, during the epoch)")
    ax.plot(epochs, [100 * a for a in held_out], "o-", label=split)
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title="LeNet-5 accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_confusion_matrix(matrix: list[list[int]], path: Path) -> None:
    """Heatmap with counts; rows are the true digit, columns the prediction."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 6), layout="constrained")
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
    save_figure(misclassified_figure(images, labels, predictions, probabilities, count), path)


def misclassified_figure(
    images: torch.Tensor,
    labels: torch.Tensor,
    predictions: torch.Tensor,
    probabilities: torch.Tensor,
    count: int = 24,
    columns: int = 8,
    fontsize: int = 8,
):
    """The figure of plot_misclassified (TensorBoard logs a smaller one: fewer columns, larger captions)."""
    plt = pyplot()
    wrong = (predictions != labels).nonzero().flatten()
    confidence = probabilities[wrong, predictions[wrong]]
    worst = wrong[confidence.argsort(descending=True)][:count]
    gap = 16  # the gap above each digit holds its caption
    height, width = images.shape[-2:]
    digits = images[worst].reshape(-1, height, width).float().cpu()
    rows = max(1, -(-len(worst) // columns))
    fig, ax = plt.subplots(figsize=(columns * 1.4, rows * 1.7 + 0.5), layout="constrained")
    ax.imshow(mosaic(digits, columns, gap).numpy(), cmap="gray")
    for k, i in enumerate(worst.tolist()):
        row, col = divmod(k, columns)
        caption = f"true {labels[i]}\npred {predictions[i]} ({probabilities[i, predictions[i]]:.0%})"
        x, y = col * (width + gap) + width / 2, row * (height + gap) - 1
        ax.text(x, y, caption, ha="center", va="bottom", fontsize=fontsize)
    ax.set_ylim(rows * (height + gap) - gap - 0.5, -gap)  # room for the first row's captions
    ax.axis("off")
    ax.set_title(f"Most confidently wrong: {len(wrong)} of {len(labels)} test images misclassified")
    return fig


def plot_filters(model: torch.nn.Module, path: Path) -> None:
    """The six 5x5 C1 kernels on one symmetric colour scale, with it (red +, blue -)."""
    save_figure(filters_figure(model), path)


def filters_figure(model: torch.nn.Module):
    plt = pyplot()
    weights = model.c1.weight.detach().float().cpu()[:, 0]  # 6 x 5 x 5
    limit = weights.abs().max().item() or 1.0
    fig, axes = plt.subplots(2, 3, figsize=(5.6, 4.2), layout="constrained")
    for k, (ax, kernel) in enumerate(zip(axes.flat, weights)):
        shown = ax.imshow(kernel.numpy(), cmap="bwr", vmin=-limit, vmax=limit)
        ax.set_title(f"C1 map {k}", fontsize=9)
        ax.axis("off")
    fig.colorbar(shown, ax=axes, shrink=0.8, label="weight")
    fig.suptitle("C1 filters (5x5), one colour scale")
    return fig


def plot_feature_maps(maps: dict[str, torch.Tensor], raw: torch.Tensor, title: str, path: Path) -> None:
    """The input digit, its 6 C1 maps (28x28) and 16 C3 maps (10x10), from LeNet5.feature_maps of one image,
    each map numbered, on one colour scale (tanh's -1 to +1)."""
    plt = pyplot()
    c1, c3 = maps["C1"][0].float().cpu(), maps["C3"][0].float().cpu()
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6), width_ratios=[1, 2.2, 2.2], layout="constrained")
    axes[0].imshow(raw.cpu().numpy(), cmap="gray")
    axes[0].set_title(title, fontsize=10)
    for ax, name, grid, columns, gap in ((axes[1], "C1", c1, 3, 3), (axes[2], "C3", c3, 4, 1)):
        shown = ax.imshow(mosaic(grid, columns, gap).numpy(), cmap="viridis", vmin=-1, vmax=1)
        size = grid.shape[-1] + gap
        for k in range(len(grid)):
            row, col = divmod(k, columns)
            ax.text(col * size, row * size, str(k), color="white", fontsize=7, va="top", ha="left")
        ax.set_title(f"{name}: {len(grid)} maps of {grid.shape[-2]}x{grid.shape[-1]}", fontsize=10)
    for ax in axes:
        ax.axis("off")
    fig.colorbar(shown, ax=axes[1:], shrink=0.8, label="activation after tanh")
    save_figure(fig, path)


def plot_predictions(rows: list[dict[str, Any]], path: Path) -> None:
    """One row per classified image: the input ("grey"), the 28x28 the network saw ("digit"), the probabilities."""
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 2.6 * len(rows)), squeeze=False, layout="constrained")
    for (ax_in, ax_digit, ax_bar), r in zip(axes, rows):
        ax_in.imshow(r["grey"].numpy(), cmap="gray", vmin=0, vmax=255)
        ax_in.set_title(printable(r["name"]), fontsize=9)
        ax_digit.imshow(r["digit"].numpy(), cmap="gray", vmin=0, vmax=255)
        ax_digit.set_title("as the network sees it (28x28)", fontsize=9)
        for ax in (ax_in, ax_digit):
            ax.axis("off")
        colours = ["tab:orange" if d == r["prediction"] else "tab:blue" for d in range(10)]
        ax_bar.bar(range(10), r["probabilities"], color=colours)
        ax_bar.set(xticks=range(10), ylim=(0, 1), title=f"prediction {r['prediction']} ({r['probability']:.1%})")
    save_figure(fig, path)
