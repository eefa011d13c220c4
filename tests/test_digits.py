import importlib.util
import io
import re

import numpy as np
import pytest
import torch
from conftest import PROJECT_DIR
from PIL import Image, ImageDraw
from test_predict import as_file, draw_seven

from extras.digits import (
    MAX_PIXELS,
    WORK_SIDE,
    ImageProblem,
    expand_paths,
    find_sheet,
    load_grayscale,
    stroke_width,
    to_mnist_digit,
)


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


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    draw_seven().save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content, message",
    [
        (lambda p: p.write_text("not an image"), "not an image (PNG, JPEG, BMP, GIF, WebP and TIFF files can be read)"),
        (lambda p: p.write_bytes(png_bytes()[:300]), "a damaged or truncated image file"),
        (lambda p: Image.new("RGB", (60, 60), "white").save(p, format="PNG"), "no digit found"),
        (lambda p: None, "no such file"),
    ],
    ids=["text-file", "truncated", "blank", "missing"],
)
def test_bad_images_raise_image_problem(tmp_path, content, message):
    path = tmp_path / "x.png"
    content(path)
    with pytest.raises(ImageProblem, match=re.escape(message)):
        to_mnist_digit(load_grayscale(path))


def test_exif_orientation_is_applied(tmp_path):
    """A phone photo is stored sideways with an Orientation tag; the digit must be read upright."""
    upright = draw_seven(size=(200, 300), box=(40, 60, 120))
    sideways = upright.transpose(Image.Transpose.ROTATE_90)  # what the sensor stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    sideways.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    as_file(upright, tmp_path, "upright.png")
    got = to_mnist_digit(load_grayscale(tmp_path / "photo.jpg")).float()
    want = to_mnist_digit(load_grayscale(tmp_path / "upright.png")).float()
    assert (got - want).abs().mean() < 8  # the same digit, up to JPEG noise (a rotated 7 differs by ~60)


def test_expand_paths_reads_folders_in_name_order(tmp_path):
    for name in ("b.png", "a.JPG", "notes.txt", "c.gif"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()  # a folder with an image-like name is not an image
    single = tmp_path / "notes.txt"
    assert expand_paths([tmp_path, single]) == [tmp_path / "a.JPG", tmp_path / "b.png", tmp_path / "c.gif", single]


# --- photos of paper, thin strokes, large files -----------------------------------------------------


def paper_photos():
    spec = importlib.util.spec_from_file_location("paper_photos", PROJECT_DIR / "scripts" / "paper_photos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("seed", range(6))
def test_a_digit_on_a_sheet_on_a_desk_is_found_on_the_sheet(tmp_path, seed):
    """A sheet on a darker desk, tilted, unevenly lit, noisy, JPEG: the 28x28 is the digit, not the page."""
    seven = to_mnist_digit(load_grayscale(as_file(draw_seven(), tmp_path, "seven.png")))
    photo = paper_photos().photo(seven.numpy(), np.random.default_rng(seed))
    photo.save(tmp_path / "photo.jpg", quality=80)
    read = to_mnist_digit(load_grayscale(tmp_path / "photo.jpg"))
    check_mnist_like(read)
    assert similarity(read, seven) > 0.8  # the whole sheet read as the digit scores about 0.3


@pytest.mark.parametrize("loops", ["0", "8"])
def test_a_light_digit_with_loops_on_black_is_not_taken_for_a_sheet(loops):
    image = Image.new("L", (200, 200), 0)
    draw = ImageDraw.Draw(image)
    if loops == "0":
        draw.ellipse([60, 30, 140, 170], outline=255, width=22)
    else:
        draw.ellipse([65, 25, 135, 95], outline=255, width=20)
        draw.ellipse([60, 90, 140, 175], outline=255, width=20)
    grey = torch.from_numpy(np.asarray(image, dtype=np.float32))
    assert find_sheet(grey) is None
    check_mnist_like(to_mnist_digit(grey))


def test_hairline_strokes_are_thickened_to_mnists_width(tmp_path):
    hairline = draw_seven(size=(400, 400), box=(100, 60, 200))  # 14 px strokes on a 240 px digit: too thin
    thick = to_mnist_digit(load_grayscale(as_file(hairline, tmp_path, "thin.png"))).numpy() > 127
    assert stroke_width(thick) >= 2.0  # MNIST's thinnest strokes, about 2 px of 20


def test_a_jpeg_is_decoded_reduced_and_a_larger_png_refused(tmp_path):
    big = draw_seven(size=(6000, 4000), box=(2000, 500, 2400)).convert("L")
    big.save(tmp_path / "big.jpg", quality=90)
    big.save(tmp_path / "big.png")
    assert max(load_grayscale(tmp_path / "big.jpg", max_pixels=8_000_000).shape) <= WORK_SIDE  # 24 MP, decoded at 6
    with pytest.raises(ImageProblem, match=r"too large: 6000 x 4000 pixels \(limit 8,000,000\)"):
        load_grayscale(tmp_path / "big.png", max_pixels=8_000_000)
    assert max(load_grayscale(tmp_path / "big.png").shape) <= WORK_SIDE


def test_a_light_digit_on_black_with_a_thin_white_frame_is_read_light_on_dark():
    """The frame is light, but the picture is mostly dark: the ink is the smaller, light part (the border alone said
    dark ink on light paper and read the frame as the digit)."""
    grey = torch.zeros(60, 60)
    grey[:2], grey[-2:], grey[:, :2], grey[:, -2:] = 255, 255, 255, 255  # the frame
    grey[12:48, 27:33] = 255  # a "1"
    digit = to_mnist_digit(grey)
    check_mnist_like(digit)
    rows, cols = (digit > 64).nonzero(as_tuple=True)
    assert cols.max() - cols.min() < 8 and rows.max() - rows.min() >= 18  # a tall thin stroke, not a square frame


@pytest.mark.parametrize(
    "mode, paper, ink",
    [("I;16", 60_000, 2_000), ("I", 0, 50_000), ("F", 0.95, 0.05), ("F", -3.0, 7.5)],
    ids=["16-bit", "32-bit", "float 0-1", "float, any range"],
)
def test_high_bit_depth_images_are_read_by_their_range(tmp_path, mode, paper, ink):
    """A 16-bit PNG, a 32-bit or float TIFF: every value above 255 was clipped to white ("no digit found")."""
    values = np.full((64, 64), paper, dtype={"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode])
    values[12:52, 28:36] = ink
    image = Image.fromarray(values, mode=mode if mode != "I;16" else None)
    path = tmp_path / ("digit.png" if mode == "I;16" else "digit.tif")
    image.save(path)
    with Image.open(path) as reopened:
        assert reopened.mode.startswith(mode[:1])  # really stored wide
    grey = load_grayscale(path)
    assert 0 <= grey.min() and grey.max() <= 255 and grey.max() - grey.min() > 150  # (not clipped to one value)
    check_mnist_like(to_mnist_digit(grey))


def png_header(path, width: int, height: int):
    """A PNG that declares width x height pixels and holds almost nothing (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(10))))
    return path


@pytest.mark.parametrize("side", [10_000, 100_000])  # beyond PIL's own limits: its warning, then its error
@pytest.mark.parametrize("max_pixels", [MAX_PIXELS, 16_000_000])  # predict.py's limit, the page's
def test_a_picture_beyond_pils_limits_is_too_large_in_our_words(tmp_path, side, max_pixels):
    path = png_header(tmp_path / "bomb.png", side, side)
    with pytest.raises(ImageProblem) as problem:
        load_grayscale(path, max_pixels=max_pixels)
    assert str(problem.value) == f"too large: {side} x {side} pixels (limit {max_pixels:,})"


def test_a_picture_too_thin_for_a_digit_is_named_by_its_own_size(tmp_path):
    """5000 x 20 is reduced to 1024 px on its longer side first: the message still gives the file's size."""
    Image.new("L", (5000, 20), 255).save(tmp_path / "thin.png")
    with pytest.raises(ImageProblem, match=re.escape("no digit found (the picture is only 5000 x 20 pixels)")):
        to_mnist_digit(load_grayscale(tmp_path / "thin.png"))


def test_a_name_too_long_for_the_file_system_is_an_image_problem(tmp_path):
    """expand_paths keeps it as given (Path.is_dir() raises ENAMETOOLONG), and reading it says why it failed."""
    long = tmp_path / ("x" * 300 + ".png")
    assert expand_paths([long, tmp_path / "missing.png"]) == [long, tmp_path / "missing.png"]
    with pytest.raises(ImageProblem, match="^cannot be read: file name too long$"):
        load_grayscale(long)
    with pytest.raises(ImageProblem, match="^not a file$"):
        load_grayscale(tmp_path)
