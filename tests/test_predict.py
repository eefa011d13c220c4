import json

import pytest
import torch
from conftest import run_script
from PIL import Image, ImageDraw

from helper import save_model
from predict import ImageProblem, load_grayscale, predict_paths, to_mnist_digit


def draw_seven(size=(300, 200), paper="white", ink="black", mode="RGB", box=(150, 30, 120)):
    """A thick pen '7' somewhere off-centre on a canvas of its own size and colours."""
    image = Image.new(mode, size, paper)
    left, top, side = box
    ImageDraw.Draw(image).line(
        [(left, top), (left + side, top), (left + side * 0.4, top + side * 1.2)], fill=ink, width=14, joint="curve"
    )
    return image


def check_mnist_like(digit: torch.Tensor) -> None:
    assert digit.shape == (28, 28) and digit.dtype == torch.uint8
    assert digit[0].max() == 0 and digit[:, 0].max() == 0  # black background, light ink
    rows, cols = (digit > 0).nonzero(as_tuple=True)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert max(height, width) <= 20 and max(height, width) >= 18  # the longer side scaled to 20 px
    mass = digit.double()
    com_row = (mass.sum(1) * torch.arange(28)).sum() / mass.sum()
    com_col = (mass.sum(0) * torch.arange(28)).sum() / mass.sum()
    assert abs(com_row - 13.5) <= 1 and abs(com_col - 13.5) <= 1


def as_file(image: Image.Image, tmp_path, name: str):
    path = tmp_path / name
    image.save(path)
    return path


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("dark_on_light.png", {}),
        ("light_on_dark.png", {"paper": "black", "ink": "white"}),
        ("blue_pen_on_cream.jpg", {"paper": (243, 236, 217), "ink": (27, 58, 140)}),
        ("transparent.png", {"paper": (0, 0, 0, 0), "ink": (0, 0, 0, 255), "mode": "RGBA"}),
        ("white_ink_transparent.png", {"paper": (0, 0, 0, 0), "ink": (255, 255, 255, 255), "mode": "RGBA"}),
        ("grey.bmp", {"mode": "L", "paper": 230, "ink": 20}),
        ("tiny.gif", {"size": (40, 40), "box": (8, 6, 20)}),
    ],
)
def test_preprocessing_makes_an_mnist_style_digit(tmp_path, name, kwargs):
    digit = to_mnist_digit(load_grayscale(as_file(draw_seven(**kwargs), tmp_path, name)))
    check_mnist_like(digit)
    assert digit.max() > 200  # bright ink (anti-aliasing may soften the very brightest pixel)


def test_dark_ink_becomes_light():
    grey = torch.full((50, 50), 255.0)
    grey[10:40, 22:28] = 0.0  # a black bar on white paper
    digit = to_mnist_digit(grey)
    assert digit[14, 14] > 200 and digit[0, 0] == 0


@pytest.mark.parametrize(
    "content, message",
    [
        (lambda p: p.write_text("not an image"), "not a readable image"),
        (lambda p: Image.new("RGB", (60, 60), "white").save(p, format="PNG"), "no digit found"),
        (lambda p: None, "no such file"),
    ],
    ids=["text-file", "blank", "missing"],
)
def test_bad_images_raise_image_problem(tmp_path, content, message):
    path = tmp_path / "x.png"
    content(path)
    with pytest.raises(ImageProblem, match=message):
        to_mnist_digit(load_grayscale(path))


def test_predict_cli_answers_the_good_images_and_reports_the_bad(tmp_path, tiny_model):
    weights = tmp_path / "model.pt"
    save_model(weights, tiny_model, 1, {}, {})
    good = as_file(draw_seven(), tmp_path, "seven.png")
    (tmp_path / "broken.png").write_text("garbage")
    Image.new("L", (30, 30), 0).save(tmp_path / "blank.png")
    done = run_script(
        "predict.py", str(good), str(tmp_path / "broken.png"), str(tmp_path / "blank.png"), str(tmp_path / "nope.png"),
        "--weights", str(weights), "--json", "--topk", "2", "--show", str(tmp_path / "show.png"),
    )  # fmt: skip
    assert done.returncode == 1
    assert "3 of 4 images could not be classified" in done.stderr and "Traceback" not in done.stderr
    results = json.loads(done.stdout)
    assert [("error" in r) for r in results] == [False, True, True, True]
    assert len(results[0]["topk"]) == 2 and 0 <= results[0]["prediction"] <= 9
    assert sum(results[0]["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert results[2]["error"].startswith("no digit found") and results[3]["error"] == "no such file"
    assert (tmp_path / "show.png").read_bytes()[:4] == b"\x89PNG"


def test_predict_paths_keeps_order_and_folders(tmp_path, tiny_model):
    for i, kwargs in enumerate([{}, {"paper": "black", "ink": "white"}]):
        as_file(draw_seven(**kwargs), tmp_path, f"{i}.png")
    results = predict_paths(tiny_model.eval(), sorted(tmp_path.glob("*.png")), topk=3)
    assert [r["path"].endswith(f"{i}.png") for i, r in enumerate(results)] == [True, True]
    assert all(len(r["topk"]) == 3 for r in results)
