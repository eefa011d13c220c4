"""Your own images in, MNIST-style digits out: what predict.py (and anything else that classifies
pictures of digits) feeds the network.

MNIST digits are light ink on black, cropped to the ink, the longer side scaled to 20 px and
centred by their centre of mass in a 28x28 field; an image that is made to look like that is
read as well as the test set is. data.preprocess then pads and normalizes it as in training.
"""

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torchvision.transforms.v2 import functional as TF

if TYPE_CHECKING:
    from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MIN_CONTRAST = 32  # grey levels between ink and background below which we call the image blank
MAX_PIXELS = 40_000_000  # a photo is at most a few tens of megapixels; more is a decompression bomb


class ImageProblem(Exception):
    """This image cannot be classified (unreadable, too large, no digit); the others still are."""


def load_grayscale(path: Path) -> torch.Tensor:
    """H x W float tensor in 0..255, upright (EXIF orientation applied); transparent pixels become a
    background that contrasts with the ink."""
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise ImageProblem("no such file" if not Path(path).exists() else "not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise ImageProblem(f"too large: {image.width} x {image.height} pixels (limit {MAX_PIXELS:,})")
                image.seek(0)  # GIF and other animations: the first frame
                grey = grey_from_image(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageProblem(f"too large to decode safely ({err})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as err:
        raise ImageProblem(f"not a readable image ({type(err).__name__})") from None
    return grey


def grey_from_image(image: "Image.Image") -> torch.Tensor:
    """A PIL image of any mode (a file's, or a drawing canvas's) -> H x W float grey in 0..255, upright.

    The one conversion behind both load_grayscale and the drawing app, so a file and a canvas are
    read alike: EXIF orientation applied, transparency handled by grey_from_rgba."""
    from PIL import ImageOps

    rgba = ImageOps.exif_transpose(image).convert("RGBA")  # phones store rotation as a tag
    return grey_from_rgba(TF.pil_to_tensor(rgba).float())


def grey_from_rgba(pixels: torch.Tensor) -> torch.Tensor:
    """4 x H x W RGBA in 0..255 -> H x W grey; transparent pixels take the background the ink contrasts with."""
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


def expand_paths(inputs: list[str | Path]) -> list[Path]:
    """Files as given; folders replaced by the images inside them (sorted by name)."""
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        else:
            paths.append(item)
    return paths
