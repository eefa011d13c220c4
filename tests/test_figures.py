"""support/figures.py: every figure is a real PNG of the data it is given, written atomically."""

from support.cli import UserError

import numpy as np
import pytest
import torch
from PIL import Image

from LeNet5 import LeNet5
from support import figures


def picture(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("L"))


def test_each_figure_draws_something(tmp_path):
    losses = [2.3 * 0.9**i for i in range(40)]
    figures.plot_loss(losses, 10, tmp_path / "loss.png")
    figures.plot_accuracy([1, 2], [0.9, 0.95], [0.92, 0.96], "test", tmp_path / "accuracy.png")
    matrix = (torch.eye(10, dtype=torch.int64) * 100 + 1).tolist()
    figures.plot_confusion_matrix(matrix, tmp_path / "confusion.png")
    labels = torch.arange(30) % 10
    predictions = (labels + (torch.arange(30) % 3 == 0)) % 10  # every third one wrong
    images = torch.randint(0, 255, (30, 28, 28), dtype=torch.uint8)
    figures.plot_misclassified(images, labels, predictions, torch.full((30, 10), 0.1), tmp_path / "wrong.png")
    figures.plot_filters(LeNet5(), tmp_path / "filters.png")
    with torch.no_grad():
        maps = LeNet5().feature_maps(torch.randn(1, 1, 32, 32))
    figures.plot_feature_maps(maps, images[0], "input (3)", tmp_path / "maps.png")
    for name in ("loss", "accuracy", "confusion", "wrong", "filters", "maps"):
        pixels = picture(tmp_path / f"{name}.png")
        assert pixels.shape[0] > 100 and pixels.std() > 10, name  # not a blank canvas


def test_the_misclassified_grid_shows_only_wrong_ones_most_confident_first(tmp_path, monkeypatch):
    shown, real_mosaic = [], figures.mosaic

    def recording(images, *args, **kwargs):  # a spy: it draws what the real one draws
        shown.extend(int(image[0, 0]) for image in images)
        return real_mosaic(images, *args, **kwargs)

    monkeypatch.setattr(figures, "mosaic", recording)
    images = torch.arange(4).view(4, 1, 1).expand(4, 28, 28).to(torch.uint8)  # image i is filled with i
    labels, predictions = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 2, 1, 3])  # 1 and 2 wrong
    probabilities = torch.full((4, 10), 0.05)
    probabilities[1, 2], probabilities[2, 1] = 0.6, 0.9  # image 2's mistake is the more confident
    figures.plot_misclassified(images, labels, predictions, probabilities, tmp_path / "wrong.png")
    assert shown == [2, 1]


def test_a_mosaic_places_each_image_in_its_cell():
    images = torch.arange(1, 6).float().view(5, 1, 1).expand(5, 2, 3)
    grid = figures.mosaic(images, columns=2, gap=1)
    assert grid.shape == (3 * 2 + 2, 2 * 3 + 1)
    assert grid[0, 0] == 1 and grid[0, 4] == 2 and grid[3, 0] == 3 and grid[6, 4].isnan() and grid[2, 0].isnan()


def test_a_figure_that_cannot_be_written_leaves_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "loss.png"
    path.write_bytes(b"the old figure")
    monkeypatch.setattr(figures.pyplot().Figure, "savefig", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "full")))
    with pytest.raises(UserError, match="full; what was there before is unchanged"):
        figures.plot_loss([1.0, 0.5], 1, path)
    assert path.read_bytes() == b"the old figure" and sorted(p.name for p in tmp_path.iterdir()) == ["loss.png"]


def test_a_figure_of_ours_is_told_from_a_png_of_anyone_elses(tmp_path):
    """The mark by which an output may replace its own earlier figure and nothing else: every figure drawn here
    has it, a PNG drawn by PIL or by matplotlib directly has not, and a browser's screenshot gets it (marked_png)
    without losing a pixel. Damaged or foreign files are simply not ours."""
    ours, plain = tmp_path / "ours.png", tmp_path / "plain.png"
    figures.plot_loss([2.0, 1.0, 0.5, 0.25], 2, ours)
    plt = figures.pyplot()
    fig = plt.figure()
    fig.savefig(plain, format="png")
    plt.close(fig)
    assert figures.is_own_figure(ours) and not figures.is_own_figure(plain)
    marked = tmp_path / "marked.png"
    marked.write_bytes(figures.marked_png(plain.read_bytes()))
    assert figures.is_own_figure(marked) and np.array_equal(picture(marked), picture(plain))
    for name, data in [("cut.png", ours.read_bytes()[:20]), ("text.png", b"not a png"), ("empty.png", b"")]:
        (tmp_path / name).write_bytes(data)
        assert not figures.is_own_figure(tmp_path / name)
    assert not figures.is_own_figure(tmp_path / "missing.png") and not figures.is_own_figure(tmp_path)
    with pytest.raises(ValueError, match="not a PNG"):
        figures.marked_png(b"GIF89a")
