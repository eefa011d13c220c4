"""Classify your own digit images with a trained LeNet-5.

    python predict.py examples/ --topk 3 --out reports/predictions.png

Any PNG, JPEG, BMP or GIF (first frame), any size, colour or grey, with or without alpha:
each image is made to look like an MNIST digit first (digits.py: light ink on black, cropped to
the ink, longer side scaled to 20 px, centre of mass at the centre of a 28x28 field), then
padded and normalized exactly as in training (data.preprocess).
"""

import sys
from pathlib import Path
from typing import Any

from support.cli import (
    EXIT_SOME_FAILED,
    CliParser,
    UserError,
    add_device_flag,
    add_json_flag,
    add_weights_flag,
    number,
    one_line,
    output_file,
    print_results,
    run_cli,
)

import torch

from eval import classify
from extras.digits import ImageProblem, expand_paths, load_grayscale, to_mnist_digit
from helper import load_model
from support.devices import choose_device
from support.figures import FIGURE, plot_predictions
from support.files import OutputPlan, json_text

SHOWN = 50  # images in an --out figure at most (matplotlib draws nothing taller than 65,536 px)


def predict_paths(
    model: torch.nn.Module, paths: list[Path], topk: int, keep_images: bool = True
) -> list[dict[str, Any]]:
    """Every path gets an entry: a prediction, or the reason it could not be classified.

    Entries also hold "digit" (the 28x28 the network saw) and, with keep_images, "grey" (the image
    itself, for plotting: a folder of photos would otherwise stay in memory for nothing).
    """
    results, digits = [], []
    for path in paths:
        try:
            grey = load_grayscale(path)
            digit = to_mnist_digit(grey)
        except ImageProblem as problem:
            results.append({"path": str(path), "error": str(problem)})
            continue
        results.append({"path": str(path), "name": path.name, "grey": grey if keep_images else None, "digit": digit})
        digits.append(digit)
    if digits:
        answers = iter(classify(model, torch.stack(digits), topk))
        for r in results:
            if "error" not in r:
                r.update(next(answers))
    return results


def format_result(r: dict[str, Any]) -> str:
    """One line per image, even for a file name holding a line break."""
    if "error" in r:
        return one_line(f"{r['path']}: error: {r['error']}")
    top = ", ".join(f"{t['digit']} {t['probability']:.1%}" for t in r["topk"])
    return one_line(f"{r['path']}: {r['prediction']} ({r['probability']:.1%})   top-{len(r['topk'])}: {top}")


def none_classified(results: list[dict[str, Any]]) -> str:
    """Why no image could be classified: the one input's reason, or how many failed and the first reason."""
    first = f"{results[0]['path']}: {results[0]['error']}"
    return first if len(results) == 1 else f"none of the {len(results)} images could be classified; the first, {first}"


def as_json(results: list[dict[str, Any]]) -> str:
    public = [{k: v for k, v in r.items() if k not in ("name", "grey", "digit")} for r in results]
    return json_text(public).rstrip()


def main(argv: list[str] | None = None) -> None:
    p = CliParser(__doc__)
    p.add_argument("images", nargs="+", help="image files or folders of images")
    add_weights_flag(p)
    add_device_flag(p)
    add_json_flag(p)
    p.add_argument("--topk", type=number(int, 1, 10), default=3, help="how many of the most likely digits to list")
    figure = "write a PNG figure: each input, its 28x28 version and the probabilities"
    p.add_argument("--out", type=output_file, help=figure)
    args = p.parse_args(argv)
    paths = expand_paths(args.images)
    if not paths:
        raise UserError(f"no images found in {' '.join(args.images)}")
    if args.out:  # an input of the command is never its output
        inputs = {"the checkpoint given as --weights": args.weights}
        inputs |= {f"input image {n}": path for n, path in enumerate(paths, start=1)}
        OutputPlan(inputs).file(args.out, "--out", kind=FIGURE, example="predictions.png")
        if args.out.suffix.lower() != ".png":
            raise UserError(f"--out {args.out}: the figure is a PNG; give a name ending in .png")
    model, _ = load_model(args.weights, choose_device(args.device))
    results = predict_paths(model, paths, args.topk, keep_images=args.out is not None)
    classified = [r for r in results if "error" not in r]
    if not classified:  # nothing done: a user error, its reason on stderr
        raise UserError(none_classified(results))
    if not args.json:
        text = "\n".join(format_result(r) for r in results)
        if args.out:
            print(text)
        else:  # stdout is the only output: the results must arrive there, or it is an error
            print_results(text)
    if args.out:
        plot_predictions(classified[:SHOWN], args.out)
        shown = f" (the first {SHOWN} of {len(classified)} images)" if len(classified) > SHOWN else ""
        print(one_line(f"wrote {args.out}{shown}"), file=sys.stderr if args.json else sys.stdout)
    if args.json:  # last: stdout that cannot take it is an error, after the figure is safe
        print_results(as_json(results))
    failed = len(results) - len(classified)
    if failed:
        print(f"{failed} of {len(results)} images could not be classified", file=sys.stderr)
        sys.exit(EXIT_SOME_FAILED)


if __name__ == "__main__":
    run_cli(main)
