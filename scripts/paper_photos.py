"""Photos of handwritten digits on paper, made from real MNIST test digits, to measure how well
digits.py finds a digit the way people photograph one: a sheet on a darker desk, tilted, unevenly
lit, sometimes shadowed, grey or coloured, with sensor noise and JPEG compression.

    python -m scripts.paper_photos make --data-dir ../shared/mnist --out runs/paper --count 200
    python predict.py runs/paper --json | python -m scripts.paper_photos score

`make` writes NNNN_L.jpg (L: the true digit), each marked as this program's in its JPEG comment: it
replaces its own earlier photos, never a file of yours by one of those names. `score` reads predict.py's
JSON and prints how many were read right, and which were not.
"""

import json
import sys
from pathlib import Path

from support.cli import CliParser, UserError, number, run_cli

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from data import DataSource
from support.figures import MARK_KEY, MARK_VALUE
from support.files import Kind, check_output_dir, missing_folders, refuse_foreign_file, remove_if_empty

PHOTO = (640, 480)
DESKS = [(92, 62, 40), (70, 70, 76), (40, 44, 60), (120, 84, 52), (30, 30, 30)]
SHEETS = [(246, 246, 242), (232, 228, 214), (205, 205, 205), (250, 236, 150), (214, 230, 246), (190, 186, 180)]
INKS = [(20, 20, 24), (24, 40, 120), (70, 70, 74)]  # black pen, blue pen, pencil
PHOTO_MARK = f"{MARK_KEY}: {MARK_VALUE}"  # each photo's JPEG comment, as the figures' PNG text chunk


def is_own_photo(path: Path) -> bool:
    """Whether `path` is a JPEG that `make` wrote: one with the mark as its comment."""
    try:
        with Image.open(path) as image:
            return image.info.get("comment") == PHOTO_MARK.encode()
    except Exception:  # (not an image, unreadable)
        return False


PHOTO_FILE = Kind("a photo", is_own_photo)


def sheet_with_digit(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """An RGBA sheet (A4 or a square note) with the 28x28 MNIST digit written on it in dark ink."""
    short = int(rng.uniform(0.45, 0.75) * min(PHOTO))
    long = short if rng.random() < 0.3 else int(short * 1.41)
    width, height = (short, long) if rng.random() < 0.5 else (long, short)
    colour = np.array(SHEETS[rng.integers(len(SHEETS))], dtype=np.float32)
    paper = colour + rng.normal(0, 3, (height, width, 1))  # the paper's grain
    size = int(rng.uniform(0.35, 0.6) * short * 28 / 20)  # the digit's 20 px box: 35-60 % of the short side
    ink = np.asarray(Image.fromarray(digit).resize((size, size), Image.BICUBIC), dtype=np.float32)[..., None] / 255
    top, left = rng.integers(0, height - size + 1), rng.integers(0, width - size + 1)
    pen = np.array(INKS[rng.integers(len(INKS))], dtype=np.float32)
    region = paper[top : top + size, left : left + size]
    paper[top : top + size, left : left + size] = region * (1 - ink) + pen * ink
    rgba = np.concatenate([paper.clip(0, 255), np.full((height, width, 1), 255.0)], axis=2)
    sheet = Image.fromarray(rgba.astype(np.uint8), "RGBA").rotate(rng.uniform(-20, 20), Image.BICUBIC, expand=True)
    fit = min(1.0, 0.9 * PHOTO[0] / sheet.width, 0.9 * PHOTO[1] / sheet.height)  # the whole sheet in the photo
    return sheet.resize((int(sheet.width * fit), int(sheet.height * fit)), Image.BICUBIC)


def lighting(rng: np.random.Generator) -> np.ndarray:
    """H x W x 1 brightness factors: light falling off across the frame, and sometimes a soft shadow."""
    height, width = PHOTO[1], PHOTO[0]
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = x * np.cos(angle) + y * np.sin(angle)
    light = 1 - rng.uniform(0.1, 0.4) * (ramp - ramp.min()) / (ramp.max() - ramp.min())
    if rng.random() < 0.5:  # a hand or a phone between the lamp and the sheet
        shadow = Image.new("L", PHOTO, 0)
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.2, 0.5) * height
        ImageDraw.Draw(shadow).ellipse([cx - r, cy - r * 0.6, cx + r, cy + r * 0.6], fill=255)
        soft = np.asarray(shadow.filter(ImageFilter.GaussianBlur(r / 3)), dtype=np.float32) / 255
        light = light * (1 - rng.uniform(0.2, 0.45) * soft)
    return light[..., None]


def photo(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """The sheet lying on a desk, photographed: the desk all around it, uneven light, blur and noise."""
    desk = np.array(DESKS[rng.integers(len(DESKS))], dtype=np.float32)
    grain = np.asarray(Image.fromarray(rng.normal(128, 40, PHOTO[::-1]).clip(0, 255).astype(np.uint8)).resize(PHOTO))
    canvas = Image.fromarray((desk + (grain[..., None] - 128) * 0.25).clip(0, 255).astype(np.uint8), "RGB")
    sheet = sheet_with_digit(digit, rng)
    left, top = rng.integers(0, PHOTO[0] - sheet.width + 1), rng.integers(0, PHOTO[1] - sheet.height + 1)
    canvas.paste(sheet, (int(left), int(top)), sheet)
    blurred = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2)))
    pixels = np.asarray(blurred, dtype=np.float32) * lighting(rng) + rng.normal(0, rng.uniform(3, 8), (*PHOTO[::-1], 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")


def make(data_dir: Path, out: Path, count: int, seed: int) -> None:
    mnist = DataSource(data_dir, cache_dir=None, download=False).open()
    if count > len(mnist.test_labels):
        raise UserError(f"--count {count}: the test set has {len(mnist.test_labels):,} digits; give at most that")
    names = [f"{i:04d}_{label}.jpg" for i, label in enumerate(mnist.test_labels[:count].tolist())]
    check_output_dir(out, "--out", tuple(names), keep=False)
    for name in names:  # all before the first photo is written
        refuse_foreign_file(out / name, f"--out's {name}", PHOTO_FILE)
    created = missing_folders(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, name in enumerate(names):
        image = photo(mnist.test_images[i].numpy(), rng)
        try:
            image.save(out / name, quality=int(rng.integers(70, 92)), comment=PHOTO_MARK)
        except OSError as err:
            (out / name).unlink(missing_ok=True)  # (half a photo)
            remove_if_empty(*created)
            raise UserError(f"cannot write into {out}: {err.strerror or err}; {i} of {count} photos written") from None
    print(f"wrote {count} photos of MNIST test digits 0-{count - 1} to {out}")


def predict_says(entry: dict) -> bool:
    """Whether `entry` is what predict.py --json writes for an image: a digit, or else the error that stopped it."""
    digit = type(entry.get("prediction")) is int and 0 <= entry["prediction"] <= 9  # (a bool is no digit)
    return digit != isinstance(entry.get("error"), str)


def score(text: str) -> None:
    try:
        results = json.loads(text)
        truths = [int(Path(r["path"]).stem.split("_")[1]) for r in results]
        if not all(predict_says(r) for r in results):
            raise KeyError("prediction")
    except (json.JSONDecodeError, RecursionError, TypeError, KeyError, IndexError, ValueError):
        raise UserError("score reads `python predict.py DIR --json` of photos named NNNN_L.jpg on stdin") from None
    if not results:
        raise UserError("score: predict.py's JSON lists no images")
    wrong = []
    for r, truth in zip(results, truths):
        if r.get("prediction") != truth:
            wrong.append(f"{Path(r['path']).name}: {r.get('prediction', r.get('error'))}")
    right = len(results) - len(wrong)
    print(f"{right} of {len(results)} read right ({right / len(results):.1%})")
    print("not read right:", ", ".join(wrong) if wrong else "none")


def main(argv: list[str] | None = None) -> None:
    p = CliParser(__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make", help="write the photos")
    m.add_argument("--data-dir", type=Path, required=True, help="folder with the MNIST files")
    m.add_argument("--out", type=Path, required=True, help="folder to write the photos into")
    m.add_argument("--count", type=number(int, 1, 10_000), default=200, help="the first COUNT test digits")
    m.add_argument("--seed", type=number(int, 0, 2**63 - 1), default=0, help="seed of the photos' randomness")
    sub.add_parser("score", help="read predict.py --json from stdin")
    args = p.parse_args(argv)
    if args.command == "make":
        make(args.data_dir, args.out, args.count, args.seed)
    elif sys.stdin is None:  # (started with stdin closed: `<&-`)
        raise UserError("score reads `python predict.py DIR --json` on stdin, which is closed; pipe it in")
    else:
        score(sys.stdin.read())


if __name__ == "__main__":
    run_cli(main)
