"""Classify your own digit images with a trained LeNet-5.

    python predict.py examples/ --topk 3 --show reports/predictions.png

Any PNG, JPEG, BMP or GIF (first frame), any size, colour or grey, with or without alpha:
each image is made to look like an MNIST digit first (light ink on black, cropped to the
ink, longer side scaled to 20 px, centre of mass at the centre of a 28x28 field), then
padded and normalized exactly as in training (data.preprocess).
"""

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from data import preprocess
from helper import (
    DEFAULT_CHECKPOINT,
    CliParser,
    UserError,
    load_model,
    pyplot,
    run_cli,
    save_figure,
)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MIN_CONTRAST = 32  # grey levels between ink and background below which we call the image blank


class ImageProblem(Exception):
    """This image cannot be classified (unreadable, not an image, no digit); the others still are."""


def load_grayscale(path: Path) -> torch.Tensor:
    """H x W float tensor in 0..255; transparent pixels become a background that contrasts with the ink."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise ImageProblem("no such file")
    try:
        with Image.open(path) as image:
            image.seek(0)  # GIF and other animations: the first frame
            rgba = image.convert("RGBA")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ImageProblem(f"not a readable image ({type(err).__name__})") from None
    pixels = TF.pil_to_tensor(rgba).float()  # 4 x H x W
    grey = 0.299 * pixels[0] + 0.587 * pixels[1] + 0.114 * pixels[2]  # ITU-R 601 luma, as PIL's "L"
    alpha = pixels[3] / 255
    if alpha.min() < 1:
        # Ink drawn on a transparent canvas: put it on whichever background it contrasts with.
        opaque = alpha > 0.5
        ink_is_light = opaque.any() and grey[opaque].mean() > 127
        background = 0.0 if ink_is_light else 255.0
        grey = alpha * grey + (1 - alpha) * background
    return grey


def to_mnist_digit(grey: torch.Tensor) -> torch.Tensor:
    """H x W grey image (0..255) -> uint8 28 x 28 MNIST-style digit: light ink on black, 20 px box, centred by mass."""
    border = torch.cat([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if border.median() > 127:  # dark ink on light paper: MNIST digits are light on dark
        grey, border = 255 - grey, 255 - border
    ink = (grey - border.median()).clamp(min=0)  # remove the paper's grey level
    if ink.max() < MIN_CONTRAST:
        raise ImageProblem("no digit found (the image is blank or has no contrast)")
    ink = ink * (255 / ink.max())
    rows, cols = (ink > 0.15 * 255).nonzero(as_tuple=True)  # faint noise does not stretch the box
    digit = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]  # crop to the ink's bounding box
    height, width = digit.shape
    scale = 20 / max(height, width)
    size = [max(1, round(height * scale)), max(1, round(width * scale))]
    digit = TF.resize(digit[None], size, antialias=True)[0].clamp(0, 255)  # 20 px on the longer side
    return _centre_by_mass(digit)


def _centre_by_mass(digit: torch.Tensor) -> torch.Tensor:
    """Paste into 28 x 28 so that the intensity-weighted centre sits at the field's centre (13.5, 13.5)."""
    height, width = digit.shape
    total = digit.sum()
    com_row = (digit.sum(1) * torch.arange(height)).sum() / total
    com_col = (digit.sum(0) * torch.arange(width)).sum() / total
    top = int(round(13.5 - com_row.item()))
    left = int(round(13.5 - com_col.item()))
    top, left = min(max(top, 0), 28 - height), min(max(left, 0), 28 - width)  # keep all the ink in the field
    field = torch.zeros(28, 28)
    field[top : top + height, left : left + width] = digit
    return field.round().to(torch.uint8)


@torch.inference_mode()
def classify(model: torch.nn.Module, digits: torch.Tensor, topk: int) -> list[dict[str, Any]]:
    """digits: uint8 N x 28 x 28 -> for each: prediction, its probability, and the top-k."""
    device = next(model.parameters()).device
    images = preprocess(digits).to(device).contiguous(memory_format=torch.channels_last)
    probabilities = F.softmax(model(images), dim=1).cpu()
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


def expand_paths(inputs: list[str]) -> list[Path]:
    """Files as given; folders replaced by the images inside them (sorted)."""
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)
    return paths


def plot_predictions(results: list[dict[str, Any]], path: Path) -> None:
    """One row per classified image: the input, the 28x28 the network saw, and the probabilities."""
    plt = pyplot()
    done = [r for r in results if "error" not in r]
    fig, axes = plt.subplots(len(done), 3, figsize=(9, 2.6 * len(done)), squeeze=False, layout="constrained")
    for (ax_in, ax_digit, ax_bar), r in zip(axes, done):
        ax_in.imshow(r["_grey"].numpy(), cmap="gray", vmin=0, vmax=255)
        ax_in.set_title(Path(r["path"]).name, fontsize=9)
        ax_digit.imshow(r["_digit"].numpy(), cmap="gray", vmin=0, vmax=255)
        ax_digit.set_title("as the network sees it (28x28)", fontsize=9)
        for ax in (ax_in, ax_digit):
            ax.axis("off")
        colours = ["tab:orange" if d == r["prediction"] else "tab:blue" for d in range(10)]
        ax_bar.bar(range(10), r["probabilities"], color=colours)
        ax_bar.set(xticks=range(10), ylim=(0, 1), title=f"prediction {r['prediction']} ({r['probability']:.1%})")
    save_figure(fig, path)


def format_result(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['path']}: error: {r['error']}"
    top = ", ".join(f"{t['digit']} {t['probability']:.1%}" for t in r["topk"])
    return f"{r['path']}: {r['prediction']} ({r['probability']:.1%})   top-{len(r['topk'])}: {top}"


def predict_paths(model: torch.nn.Module, paths: list[Path], topk: int) -> list[dict[str, Any]]:
    """Every path gets an entry: a prediction, or the reason it could not be classified."""
    results, digits = [], []
    for path in paths:
        try:
            grey = load_grayscale(path)
            digit = to_mnist_digit(grey)
        except ImageProblem as problem:
            results.append({"path": str(path), "error": str(problem)})
            continue
        results.append({"path": str(path), "_grey": grey, "_digit": digit})
        digits.append(digit)
    if digits:
        answers = iter(classify(model, torch.stack(digits), topk))
        for r in results:
            if "error" not in r:
                r.update(next(answers))
    return results


def main(argv: list[str] | None = None) -> None:
    p = CliParser(__doc__)
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--weights", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint written by main.py")
    p.add_argument("--topk", type=int, default=3, help="how many of the most likely digits to list")
    p.add_argument("--show", type=Path, help="write a PNG: each input, its 28x28 version and the probabilities")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    if not 1 <= args.topk <= 10:
        p.error("--topk must be between 1 and 10")
    model, _ = load_model(args.weights)
    paths = expand_paths(args.images)
    if not paths:
        raise UserError(f"no images found in {' '.join(args.images)}")
    results = predict_paths(model, paths, args.topk)
    if args.json:
        public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
        print(json.dumps(public, indent=2))
    else:
        print("\n".join(format_result(r) for r in results))
    if args.show and any("error" not in r for r in results):
        plot_predictions(results, args.show)
        print(f"wrote {args.show}", file=sys.stderr if args.json else sys.stdout)
    failed = sum("error" in r for r in results)
    if failed:
        print(f"{failed} of {len(results)} images could not be classified", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
