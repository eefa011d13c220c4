import math

import pytest
import torch

from data import preprocess
from support.augment import BACKGROUND, Augmentation, elastic_field, gaussian_matrix


def digits(n: int = 8) -> torch.Tensor:
    """Normalized N x 1 x 32 x 32 images with a bar of ink well inside the frame."""
    raw = torch.zeros(n, 28, 28, dtype=torch.uint8)
    raw[:, 8:20, 10:18] = 255
    return preprocess(raw)


ELASTIC = Augmentation(elastic_alpha=34, elastic_sigma=4)


@pytest.mark.parametrize("augmentation", [Augmentation(), ELASTIC], ids=["affine", "affine+elastic"])
def test_shape_determinism_and_background(augmentation):
    x = digits()
    out = augmentation(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.equal(out, augmentation(x, torch.Generator().manual_seed(0)))  # the same seed, the same batch
    assert not torch.equal(out, augmentation(x, torch.Generator().manual_seed(1)))
    assert not torch.allclose(out, x)
    assert out[:, :, :2, :].sub(BACKGROUND).abs().max() < 1e-5  # the border stays blank
    blank = torch.full_like(x, BACKGROUND)
    assert torch.equal(augmentation(blank, torch.Generator().manual_seed(0)), blank)  # background stays background


def test_each_image_gets_its_own_distortion():
    out = ELASTIC(digits(2), torch.Generator().manual_seed(0))
    assert not torch.allclose(out[0], out[1])


def test_zero_strength_is_the_identity():
    x = digits()
    still = Augmentation(rotation=0, zoom=0, shift=0, elastic_alpha=0)
    assert torch.allclose(still(x, torch.Generator().manual_seed(0)), x, atol=1e-5)
    assert torch.equal(elastic_field(x.shape, torch.Generator().manual_seed(0), 0.0, 4.0), torch.zeros(8, 32, 32, 2))


def test_the_ranges_bound_each_distortion():
    """A shift of at most 1 pixel moves the ink's centre by at most 1 pixel on each axis; a wider one moves it
    further; a rotation or zoom alone keeps the centre of a centred bar where it is."""
    x = torch.full((1, 1, 32, 32), BACKGROUND).expand(256, -1, -1, -1).clone()
    x[:, :, 10:22, 13:19] = 2.0  # a bar centred on (15.5, 15.5)
    ink = lambda images: (images - BACKGROUND).clamp(min=0)  # noqa: E731
    grid = torch.arange(32.0)

    def centres(augmentation):
        weights = ink(augmentation(x, torch.Generator().manual_seed(0)))[:, 0]
        total = weights.sum((1, 2))
        return (weights.sum(2) @ grid) / total - 15.5, (weights.sum(1) @ grid) / total - 15.5

    rows, cols = centres(Augmentation(rotation=0, zoom=0, shift=1))
    assert rows.abs().max() <= 1.01 and cols.abs().max() <= 1.01 and rows.abs().max() > 0.8
    rows, _ = centres(Augmentation(rotation=0, zoom=0, shift=3))
    assert rows.abs().max() > 2
    for turned_or_zoomed in (Augmentation(rotation=20, zoom=0, shift=0), Augmentation(rotation=0, zoom=0.2, shift=0)):
        rows, cols = centres(turned_or_zoomed)
        assert rows.abs().max() < 0.05 and cols.abs().max() < 0.05
    _, bar = shape_of(ink(x[:1]))
    tilt, spread = shape_of(ink(Augmentation(rotation=20, zoom=0, shift=0)(x, torch.Generator().manual_seed(0))))
    assert 15 < tilt.abs().max() <= 20.5 and (spread / bar - 1).abs().max() < 0.05  # turned up to 20 degrees
    tilt, spread = shape_of(ink(Augmentation(rotation=0, zoom=0.2, shift=0)(x, torch.Generator().manual_seed(0))))
    size = spread / bar
    assert tilt.abs().max() < 0.5 and 0.78 < size.min() < 0.85 and 1.15 < size.max() < 1.22  # zoomed up to 20 %


def shape_of(ink: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's ink: the tilt of its long axis from the vertical (degrees, from the second moments) and its
    spread (the root-mean-square distance from its centre, pixels)."""
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    w = ink[:, 0] / ink[:, 0].sum((1, 2), keepdim=True)
    r, c = rows - (w * rows).sum((1, 2), keepdim=True), cols - (w * cols).sum((1, 2), keepdim=True)
    rr, cc, rc = (w * r * r).sum((1, 2)), (w * c * c).sum((1, 2)), (w * r * c).sum((1, 2))
    tilt = torch.rad2deg(0.5 * torch.atan2(2 * rc, rr - cc))
    return tilt, (rr + cc).sqrt()


def test_elastic_field_is_smooth_and_scales_with_alpha():
    shape = torch.Size([64, 1, 32, 32])
    field = elastic_field(shape, torch.Generator().manual_seed(0), 34.0, 4.0) * 16  # in pixels (2/32 a pixel)
    double = elastic_field(shape, torch.Generator().manual_seed(0), 68.0, 4.0) * 16
    assert torch.allclose(double, 2 * field, atol=1e-5)
    assert 0.5 < field.std() < 3  # Simard's alpha 34, sigma 4: displacements of a pixel or two
    neighbour_step = (field[:, :, 1:] - field[:, :, :-1]).abs().mean()
    assert neighbour_step < 0.2 * field.abs().mean()  # smoothed: neighbours move together


def test_gaussian_matrix_rows_are_normalized_gaussians():
    matrix = gaussian_matrix(32, 4.0, "cpu")
    assert torch.allclose(matrix.sum(1), torch.ones(32))
    assert matrix[16].argmax() == 16 and matrix[16, 12] == pytest.approx(matrix[16, 20])


def test_the_affine_path_draws_what_it_always_drew():
    """The default recipe's weights depend on this: four uniforms per image, nothing else."""
    x, generator = digits(), torch.Generator().manual_seed(0)
    Augmentation()(x, generator)
    reference = torch.Generator().manual_seed(0)
    torch.rand(8, 4, generator=reference)
    assert torch.equal(generator.get_state(), reference.get_state())


def test_shear_slants_and_squeeze_trades_width_for_height():
    """The 1998 paper's other two distortions: a horizontal shear slants a vertical bar (a 4 x 16 bar's long axis by
    17.6 degrees at a shear of 0.3, from its second moments); a squeeze widens and shortens it (or the reverse) by
    at most 1 + squeeze, its area about the same."""
    x = torch.full((1, 1, 32, 32), BACKGROUND).expand(256, -1, -1, -1).clone()
    x[:, :, 8:24, 14:18] = 2.0  # a tall bar
    ink = lambda images: (images - BACKGROUND).clamp(min=0)  # noqa: E731
    draw = lambda a: ink(a(x, torch.Generator().manual_seed(0)))  # noqa: E731
    tilt, _ = shape_of(draw(Augmentation(rotation=0, zoom=0, shift=0, shear=0.3)))
    k, h, w = 0.3, 16, 4
    most = math.degrees(0.5 * math.atan2(2 * k * h * h, h * h - w * w - k * k * h * h))
    assert 13 < tilt.abs().max() <= most + 0.3
    squeezed = draw(Augmentation(rotation=0, zoom=0, shift=0, squeeze=0.2))[:, 0]
    height = (squeezed.sum(2) > 0.5).sum(1).float()
    width = (squeezed.sum(1) > 0.5).sum(1).float()
    assert height.min() < 15 and height.max() > 17 and (height.argmax() == width.argmin() or width.min() < 4.5)
    area = squeezed.sum((1, 2)) / ink(x[:1]).sum()
    assert (area - 1).abs().max() < 0.25
    plain = Augmentation()
    assert torch.equal(plain(x, torch.Generator().manual_seed(0)),
                       Augmentation(shear=0, squeeze=0)(x, torch.Generator().manual_seed(0)))  # fmt: skip
