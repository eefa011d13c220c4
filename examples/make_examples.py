"""Draw the example digits in this folder: pen strokes through hand-placed points, with a
little jitter, in several styles (ink on paper, blue pen on cream paper, chalk on black,
transparent background, small and large canvases, PNG/JPEG/BMP/GIF). No MNIST image is used.

    python examples/make_examples.py
"""

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent

# Each digit: strokes, each a list of (x, y) points in a unit box (y down).
STROKES = {
    0: [[(0.5, 0.1), (0.3, 0.2), (0.22, 0.5), (0.3, 0.8), (0.5, 0.9), (0.7, 0.8), (0.78, 0.5), (0.7, 0.2), (0.5, 0.1)]],
    1: [[(0.38, 0.25), (0.55, 0.1), (0.55, 0.9)]],
    2: [[(0.25, 0.3), (0.35, 0.15), (0.55, 0.12), (0.72, 0.25), (0.7, 0.45), (0.45, 0.68), (0.22, 0.88), (0.8, 0.86)]],
    3: [
        [
            (0.25, 0.2),
            (0.5, 0.1),
            (0.72, 0.22),
            (0.65, 0.42),
            (0.45, 0.48),
            (0.68, 0.58),
            (0.74, 0.78),
            (0.5, 0.9),
            (0.25, 0.8),
        ]
    ],
    4: [[(0.55, 0.1), (0.2, 0.62), (0.8, 0.62)], [(0.62, 0.35), (0.62, 0.92)]],
    5: [[(0.72, 0.12), (0.32, 0.12), (0.28, 0.45), (0.5, 0.4), (0.7, 0.52), (0.72, 0.75), (0.5, 0.9), (0.25, 0.82)]],
    6: [
        [
            (0.65, 0.1),
            (0.4, 0.3),
            (0.28, 0.6),
            (0.35, 0.85),
            (0.55, 0.9),
            (0.7, 0.75),
            (0.62, 0.55),
            (0.4, 0.55),
            (0.3, 0.68),
        ]
    ],
    7: [[(0.2, 0.15), (0.8, 0.15), (0.6, 0.5), (0.45, 0.9)]],
    8: [
        [(0.5, 0.5), (0.3, 0.32), (0.5, 0.1), (0.7, 0.3), (0.5, 0.5), (0.28, 0.7), (0.5, 0.9), (0.72, 0.7), (0.5, 0.5)]
    ],
    9: [
        [
            (0.7, 0.3),
            (0.55, 0.12),
            (0.35, 0.18),
            (0.3, 0.35),
            (0.45, 0.48),
            (0.68, 0.38),
            (0.7, 0.3),
            (0.66, 0.6),
            (0.6, 0.9),
        ]
    ],
}

# (digit, file name, canvas size, digit box (left, top, size), paper, ink, pen width)
STYLES = [
    (0, "zero.gif", (200, 200), (40, 30, 140), "white", "black", 14),
    (1, "one.png", (300, 300), (60, 40, 220), "white", "#202020", 18),
    (2, "two.png", (280, 280), (40, 40, 200), "white", "black", 16),
    (3, "three_blue_pen.jpg", (400, 300), (200, 40, 220), "#f3ecd9", "#1b3a8c", 14),
    (4, "four_transparent.png", (256, 256), (30, 30, 200), None, "black", 16),
    (5, "five_chalk.bmp", (64, 64), (10, 8, 48), "black", "white", 5),
    (6, "six.png", (240, 320), (30, 60, 180), "#dddddd", "#111111", 15),
    (7, "seven.jpg", (300, 300), (50, 40, 210), "white", "black", 18),
    (8, "eight.png", (200, 260), (20, 40, 160), "white", "black", 13),
    (9, "nine.png", (280, 280), (50, 40, 200), "white", "#101010", 16),
]


def smooth(points, steps=12):
    """Catmull-Rom through the points: a pen moves in curves, not corners."""
    pts = [points[0], *points, points[-1]]
    out = []
    for i in range(1, len(pts) - 2):
        p0, p1, p2, p3 = pts[i - 1], pts[i], pts[i + 1], pts[i + 2]
        for s in range(steps):
            t = s / steps
            out.append(
                tuple(
                    0.5 * (2 * b + (-a + c) * t + (2 * a - 5 * b + 4 * c - d) * t**2 + (-a + 3 * b - 3 * c + d) * t**3)
                    for a, b, c, d in zip(p0, p1, p2, p3)
                )
            )
    out.append(points[-1])
    return out


def draw(digit, name, size, box, paper, ink, width, rng):
    mode = "RGBA" if paper is None else "RGB"
    image = Image.new(mode, size, (0, 0, 0, 0) if paper is None else paper)
    pen = ImageDraw.Draw(image)
    left, top, side = box
    for stroke in STROKES[digit]:
        jittered = [(x + rng.uniform(-0.02, 0.02), y + rng.uniform(-0.02, 0.02)) for x, y in stroke]
        path = [(left + x * side, top + y * side) for x, y in smooth(jittered)]
        pen.line(path, fill=ink, width=width, joint="curve")
        for x, y in (path[0], path[-1]):  # round pen tips
            pen.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=ink)
    if paper is not None and name.endswith(".jpg"):  # a photo: slight blur and sensor noise
        image = image.filter(ImageFilter.GaussianBlur(1.2))
        noise = Image.effect_noise(size, 12).convert("RGB")
        image = Image.blend(image, noise, 0.06)
    if name.endswith(".gif"):
        image = image.convert("P")
    image.save(HERE / name)


def main() -> None:
    rng = random.Random(0)
    for style in STYLES:
        draw(*style, rng)
        print(f"wrote {HERE / style[1]}")


if __name__ == "__main__":
    main()
