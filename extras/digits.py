"""Your own images in, MNIST-style digits out: what predict.py (and anything else that classifies
pictures of digits) feeds the network.

MNIST digits are light ink on black, cropped to the ink, the longer side scaled to 20 px and
centred by their centre of mass in a 28x28 field; an image that is made to look like that is
read as well as the test set is. data.preprocess then pads and normalizes it as in training.
"""

import contextlib
import errno
import io
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import ndimage
from torchvision.transforms.v2 import functional as TF

if TYPE_CHECKING:
    from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MIN_CONTRAST = 32  # grey levels between ink and background below which we call the image blank
MIN_SIDE = 8  # pixels: a picture narrower or lower than this holds no readable digit
MAX_PIXELS = 40_000_000  # a photo is at most a few tens of megapixels; more is a decompression bomb
WORK_SIDE = 1024  # longer side an image is reduced to before any work: the digit ends up 20 px tall anyway
THIN, MNIST_STROKE = 0.07, 0.10  # stroke width / digit height: below THIN, thickened to MNIST's thinnest


class ImageProblem(Exception):
    """This image cannot be classified (unreadable, too large, no digit); the others still are."""


class NoDigit(ImageProblem):
    """The picture was read, and holds no digit (blank, too small): "no digit found (...)"."""


def load_grayscale(path: Path, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """H x W float tensor in 0..255, upright (EXIF orientation applied), at most WORK_SIDE px on its
    longer side; transparent pixels become a background that contrasts with the ink.

    An image that would decode to more than max_pixels is refused unread; a JPEG is decoded at 1/2
    to 1/8 of its size when that still leaves WORK_SIDE px, so a large photo costs little."""
    problem = file_problem(Path(path))
    if problem:
        raise ImageProblem(problem)
    return read_grayscale(Path(path), max_pixels)


def file_problem(path: Path) -> str | None:
    """Why `path` is no file to read, as an ImageProblem says it ("no such file"; "not a file": a folder, a pipe,
    a device; or what the system says: "cannot be read: file name too long"), or None for a regular file."""
    try:
        mode = path.stat().st_mode
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):  # (what Path.exists() calls absent)
            return "no such file"
        reason = err.strerror or type(err).__name__
        return f"cannot be read: {reason[:1].lower()}{reason[1:]}"
    return None if stat.S_ISREG(mode) else "not a file"


Source = Path | bytes  # an image file, or the bytes of one (what a drawing canvas sends)


def read_grayscale(source: Source, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """load_grayscale's reading, of a file or of the bytes of one: every way it can fail is an ImageProblem."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(_readable(source)) as image:
                width, height = image.size
                image.draft(None, (WORK_SIDE, WORK_SIDE))  # JPEG only; other formats ignore it
                decoded = image.width * image.height
                for limit, pixels in ((own_limit(image.format, max_pixels), width * height), (max_pixels, decoded)):
                    if pixels > limit:
                        raise ImageProblem(too_large(width, height, limit))
                image.seek(0)  # GIF and other animations: the first frame
                grey = grey_from_image(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # PIL's own limit, as it opens the file
        declared = declared_size(source)
        if declared is None:
            raise ImageProblem("too large to decode safely") from None
        (width, height), kind = declared
        raise ImageProblem(too_large(width, height, own_limit(kind, max_pixels))) from None
    except UnidentifiedImageError:
        raise ImageProblem("not an image (PNG, JPEG, BMP, GIF, WebP and TIFF files can be read)") from None
    except (OSError, ValueError, SyntaxError, EOFError):
        raise ImageProblem("a damaged or truncated image file") from None
    return grey


def own_limit(kind: str | None, max_pixels: int) -> int:
    """The most pixels a picture of this format may have: max_pixels, but a JPEG is decoded smaller (draft)."""
    return MAX_PIXELS if kind == "JPEG" else min(MAX_PIXELS, max_pixels)


def too_large(width: int, height: int, limit: int) -> str:
    return f"too large: {width} x {height} pixels (limit {limit:,})"


def _readable(source: Source):
    return io.BytesIO(source) if isinstance(source, bytes) else source


def declared_size(source: Source) -> tuple[tuple[int, int], str] | None:
    """The width and height an image's header declares, and its format, read by the PIL plugin that claims it
    without the decompression-bomb check that Image.open makes (nothing decoded); None when no plugin reads it."""
    from PIL import Image

    Image.init()
    with contextlib.ExitStack() as stack:
        try:
            file = stack.enter_context(open(source, "rb") if isinstance(source, Path) else io.BytesIO(source))
            prefix = file.read(16)
        except OSError:
            return None
        for name in Image.ID:
            factory, accepts = Image.OPEN[name]
            if accepts is not None and not accepts(prefix):
                continue
            file.seek(0)
            try:
                header = stack.enter_context(factory(file, ""))
                return header.size, header.format
            except Exception:  # (not this plugin's format after all: the next one)
                continue
    return None


def grey_from_image(image: "Image.Image") -> torch.Tensor:
    """A PIL image of any mode (a file's, or a drawing canvas's) -> H x W float grey in 0..255, upright.

    The one conversion behind both load_grayscale and the drawing app, so a file and a canvas are
    read alike: EXIF orientation applied, transparency handled by grey_from_rgba."""
    from PIL import ImageOps

    upright = ImageOps.exif_transpose(image)  # phones store rotation as a tag
    factor = -(-max(upright.size) // WORK_SIDE)
    if upright.mode in WIDE_MODES:  # 16-bit, 32-bit or float grey: by its own range, not clipped at 255
        grey = torch.from_numpy(wide_grey(np.asarray(upright)))
        grey = torch.nn.functional.avg_pool2d(grey[None, None], factor)[0, 0] if factor > 1 else grey
    else:
        rgba = upright.convert("RGBA")
        if factor > 1:
            rgba = rgba.reduce(factor)  # box averages: thin strokes stay, fainter
        grey = grey_from_rgba(TF.pil_to_tensor(rgba).float())
    if min(grey.shape) < MIN_SIDE:  # said here, where the picture's own size is known (not the reduced one's)
        raise NoDigit(too_small(*upright.size))
    return grey


WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # PIL's modes of more than 8 bits per pixel


def wide_grey(values: np.ndarray) -> np.ndarray:
    """A 16-bit, 32-bit or float grey image -> float32 0..255 by its real range: whole numbers by their type's
    (16 bits: 0..65535; 32 bits: 0..65535 when that holds them, else their own extremes), fractions as 0..1, and
    any other floats by their own extremes. NaN and infinities count as the darkest value."""
    fractions_allowed = np.issubdtype(values.dtype, np.floating)
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    values = np.where(finite, values, np.min(values[finite]) if finite.any() else 0.0)
    low, high = float(values.min()), float(values.max())
    if fractions_allowed and 0 <= low and high <= 1:
        scale, offset = 255.0, 0.0
    elif 0 <= low and high <= 255 and np.all(values == np.round(values)):
        scale, offset = 1.0, 0.0
    elif 0 <= low and high <= 65535 and np.all(values == np.round(values)):
        scale, offset = 255 / 65535, 0.0
    else:  # floats beyond 0..1, or 32-bit values: their own extremes
        scale, offset = (255 / (high - low) if high > low else 0.0), low
    return ((values - offset) * scale).astype(np.float32)


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


def too_small(width: int, height: int) -> str:
    return f"no digit found (the picture is only {width} x {height} pixels)"


def to_mnist_digit(grey: torch.Tensor) -> torch.Tensor:
    """H x W grey image (0..255) -> uint8 28 x 28 MNIST-style digit: light ink on black, 20 px box, centred by mass.

    A photo of a sheet of paper on a darker surround is read inside the sheet, its lighting evened out."""
    if min(grey.shape) < MIN_SIDE:
        raise NoDigit(too_small(grey.shape[1], grey.shape[0]))
    sheet = find_sheet(grey)
    if sheet is None:
        ink = plain_ink(grey)
    elif (ink := ink_on_sheet(grey, sheet)) is None:
        raise NoDigit("no digit found on the sheet of paper")
    if ink.max() < MIN_CONTRAST:
        raise NoDigit("no digit found (the image is blank or has no contrast)")
    ink = thicken(ink * (255 / ink.max()))
    digit = ink[_ink_box(ink)]  # crop to the ink's bounding box
    height, width = digit.shape
    scale = 20 / max(height, width)
    size = [max(1, round(height * scale)), max(1, round(width * scale))]
    digit = TF.resize(digit[None], size, antialias=True)[0].clamp(0, 255)  # 20 px on the longer side
    return _centre_by_mass(digit)


def plain_ink(grey: torch.Tensor) -> torch.Tensor:
    """Light ink on black, the background's grey level removed. Which side is ink is judged from the whole image:
    split in two by Otsu's threshold, the ink is the smaller part (a digit covers a fifth of its picture or less,
    so a thin light frame round a light digit on black does not make the frame the background); only when the
    two parts are near even does the border decide."""
    values = grey.numpy()
    light = torch.from_numpy(values > _otsu(values)) if np.ptp(values) >= MIN_CONTRAST else grey > 127
    share = light.float().mean().item()
    border = torch.cat([light[0], light[-1], light[:, 0], light[:, -1]]).float().mean().item()
    dark_ink = share > 0.6 or (0.4 <= share <= 0.6 and border > 0.5)
    if dark_ink:  # dark ink on light paper: MNIST digits are light on dark
        grey, light = 255 - grey, ~light
    background = grey[~light] if (~light).any() else grey.flatten()
    return without_frame((grey - background.median()).clamp(min=0))


def without_frame(ink: torch.Tensor) -> torch.Tensor:
    """The ink without a frame round the picture: a mark that lies along the edges, touching three sides or four,
    is dropped when other ink remains (a tightly cropped digit that touches every side is kept)."""
    marks, count = ndimage.label(ink.numpy() > 0.15 * float(ink.max()))
    if count < 2:
        return ink
    band = max(2, round(0.04 * min(ink.shape)))
    edge = np.ones(ink.shape, dtype=bool)
    edge[band:-band, band:-band] = False
    index = range(1, count + 1)
    sizes = ndimage.sum(np.ones(ink.shape), marks, index)
    along = ndimage.sum(edge, marks, index) / sizes
    sides = [
        np.isin(np.arange(1, count + 1), np.unique(side)) for side in (marks[0], marks[-1], marks[:, 0], marks[:, -1])
    ]
    frame = (along > 0.6) & (np.sum(sides, axis=0) >= 3)
    if frame.all() or not frame.any():
        return ink
    dropped = np.isin(marks, np.flatnonzero(frame) + 1)
    return ink.masked_fill(torch.from_numpy(ndimage.binary_dilation(dropped, iterations=1)), 0.0)


def _ink_box(ink: torch.Tensor) -> tuple[slice, slice]:
    rows, cols = (ink > 0.15 * 255).nonzero(as_tuple=True)  # faint noise does not stretch the box
    return slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1)


def _otsu(values: np.ndarray) -> float:
    """The grey level that best splits `values` (0..255) into two classes (Otsu, 1979)."""
    counts = np.bincount(values.clip(0, 255).astype(np.uint8).ravel(), minlength=256).astype(np.float64)
    weight = np.cumsum(counts)
    mass = np.cumsum(counts * np.arange(256))
    dark, light = weight, weight[-1] - weight
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mass[-1] * dark - mass * weight[-1]) ** 2 / (dark * light)
    return float(np.nanargmax(np.where(np.isfinite(between), between, np.nan)))


@dataclass
class Sheet:
    mask: np.ndarray  # H x W, True on the sheet, its edge left out
    tilt: float  # degrees its edges are turned from the frame's (within +-45)


def find_sheet(grey: torch.Tensor) -> Sheet | None:
    """The sheet of paper when the image is a photo of one on a darker surround, else None.

    Judged on a copy of at most 200 px: the largest light region must be mostly surrounded by something
    darker (not the frame), big, compact, and interrupted only by thin dark strokes. A light digit on
    black fails the last two (its loops are wide holes, its strokes no compact region)."""
    factor = max(1, -(-max(grey.shape) // 200))
    small = torch.nn.functional.avg_pool2d(grey[None, None], factor, ceil_mode=True)[0, 0].numpy()
    if np.ptp(small) < MIN_CONTRAST:  # blank: nothing to split
        return None
    light = small > _otsu(small)
    frame = np.concatenate([light[0], light[-1], light[:, 0], light[:, -1]])
    labels, count = ndimage.label(light)
    if count == 0 or frame.mean() > 0.5:  # the light part reaches the frame all round: no surround
        return None
    paper = labels == 1 + np.argmax(ndimage.sum(light, labels, range(1, count + 1)))
    whole = ndimage.binary_fill_holes(paper)
    rows, cols = np.nonzero(whole)
    box = (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
    holes = whole & ~light  # dark inside the sheet: ink (the inside of a loop is light paper again)
    widest = ndimage.distance_transform_edt(holes).max() if holes.any() else 0.0
    size = np.sqrt(whole.sum())
    if not holes.any() or whole.sum() < 0.08 * whole.size or whole.sum() < 0.5 * box or holes.sum() > 0.2 * whole.sum():
        return None
    if widest > 0.1 * size:  # wide holes: the loops of a light digit, not pen strokes on paper
        return None
    inner = ndimage.binary_erosion(whole, iterations=max(1, round(0.02 * size)))  # the sheet's edge is no ink
    full = np.kron(inner, np.ones((factor, factor), dtype=bool))[: grey.shape[0], : grey.shape[1]]
    return Sheet(full, _tilt(rows, cols)) if full.any() else None


def _tilt(rows: np.ndarray, cols: np.ndarray) -> float:
    """The turn (degrees, counter-clockwise as seen) that puts the region's edges square to the frame:
    the one whose bounding box is smallest."""
    angles = np.deg2rad(np.arange(-45, 45))[:, None]
    x = cols * np.cos(angles) - rows * np.sin(angles)
    y = cols * np.sin(angles) + rows * np.cos(angles)
    return float(np.rad2deg(angles[np.argmin(np.ptp(x, axis=1) * np.ptp(y, axis=1)), 0]))


def ink_on_sheet(grey: torch.Tensor, sheet: Sheet) -> torch.Tensor | None:
    """Dark ink on the sheet as light on black, turned square with the sheet (people write along its edges).

    The paper's own brightness, which shadows and uneven light vary, is estimated around every pixel (a
    closing wider than a stroke); the ink is what falls short of it, less the noise."""
    rows, cols = np.nonzero(sheet.mask)
    crop = slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)
    inside = sheet.mask[crop]
    pixels = grey.numpy()[crop].astype(np.float32)
    pixels = np.where(inside, pixels, np.median(pixels[inside]))  # the desk takes the paper's level
    pixels = ndimage.gaussian_filter(pixels, 1.0)
    window = max(3, round(0.12 * np.sqrt(inside.sum())))
    paper = ndimage.minimum_filter(ndimage.maximum_filter(pixels, window), window)  # keeps a shadow's edge sharp
    shortfall = (paper - pixels) * inside
    noise = 1.4826 * np.median(np.abs(shortfall[inside] - np.median(shortfall[inside])))
    ink = _main_strokes((shortfall - np.median(shortfall[inside]) - 3 * noise).clip(min=0) * inside, inside)
    if ink is None:
        return None
    upright = TF.rotate(torch.from_numpy(ink)[None], -sheet.tilt, TF.InterpolationMode.BILINEAR, expand=True)
    return upright[0]


def _main_strokes(ink: np.ndarray, inside: np.ndarray) -> np.ndarray | None:
    """The ink that makes the digit: marks that lie along the sheet's edge (its shading, a shadow's edge) and
    marks far smaller than the largest stroke (specks) are dropped."""
    strokes, count = ndimage.label(ink > 0.15 * ink.max())
    if count == 0:
        return None
    index = range(1, count + 1)
    sizes = ndimage.sum(np.ones_like(ink), strokes, index)
    edge = inside & ~ndimage.binary_erosion(inside, iterations=3)
    along_edge = ndimage.sum(edge, strokes, index) > 0.3 * sizes
    sizes = np.concatenate([[0], np.where(along_edge, 0, sizes)])
    if sizes.max() == 0:
        return None
    keep = sizes >= 0.1 * sizes.max()
    return ink * ndimage.binary_dilation(keep[strokes], iterations=2)  # with the faint rim of each stroke


def stroke_width(mask: np.ndarray) -> float:
    """Mean width of the strokes in a binary mask: twice the area over the boundary (both sides of a stroke)."""
    boundary = mask.sum() - ndimage.binary_erosion(mask).sum()
    return 2 * float(mask.sum()) / max(int(boundary), 1)


def thicken(ink: torch.Tensor) -> torch.Tensor:
    """Strokes much thinner than MNIST's (a fine pen, a small brush) widened to MNIST's thinnest:
    the network never saw a hairline digit."""
    box = _ink_box(ink)
    height = max(box[0].stop - box[0].start, box[1].stop - box[1].start)
    width = stroke_width((ink[box] > 127.5).numpy())
    if width >= THIN * height:
        return ink
    grow = round(MNIST_STROKE * height - width)
    return torch.from_numpy(ndimage.maximum_filter(ink.numpy(), size=grow + 1))


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
    """Files as given; folders replaced by the images inside them (sorted by name). A name that cannot even be
    looked up (one too long for the file system) stays as given: reading it is that input's ImageProblem."""
    paths = []
    for item in map(Path, inputs):
        if _is_folder(item):
            # (a folder named like an image is no image; a pipe, a device or a broken link is, and is reported)
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not _is_folder(p))
        else:
            paths.append(item)
    return paths


def _is_folder(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # (Path.is_dir() raises on a name too long, where a missing one is False)
        return False
