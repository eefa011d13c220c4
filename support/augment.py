"""Random distortions of training batches: each image gets its own, the whole batch is warped at once.

Handwriting varies in slant, size, position and in the wobble of the pen. Showing the small
network that variation keeps it from memorizing the training set. Two kinds, both expressed as
one sampling grid, so a batch costs one ``F.grid_sample`` whatever is switched on:
- affine: rotation, scale, shift, horizontal shear and squeeze (LeCun et al., 1998, trained on translations,
  scaling, squeezing and shearing);
- elastic: a random displacement field per image, smoothed by one Gaussian blur and scaled by
  alpha pixels (Simard, Steinkraus & Platt, 2003: 99.6 % with a simple convolutional network).
Blank pixels stay background; a generator makes every draw reproducible. The random numbers are
drawn on the images' own device (the generator lives there too), so a GPU step waits for nothing.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from LeNet5 import INPUT_NORMALIZATION

BACKGROUND = (0.0 - INPUT_NORMALIZATION["mean"]) / INPUT_NORMALIZATION["std"]  # a blank pixel, normalized


@dataclass(frozen=True)
class Augmentation:
    rotation: float = 10.0  # degrees, uniform in +-rotation
    zoom: float = 0.1  # a scale factor, uniform in 1 +- zoom
    shift: float = 2.0  # pixels on each axis, uniform in +-shift
    shear: float = 0.0  # horizontal shear: x moves by up to +-shear times y
    squeeze: float = 0.0  # width times 1 + s and height divided by it, s uniform in +-squeeze
    elastic_alpha: float = 0.0  # elastic displacement strength in pixels (0: off)
    elastic_sigma: float = 4.0  # smoothness of the elastic field: the Gaussian's std in pixels

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """N x 1 x H x W normalized images -> the same, distorted (`generator` on the images' device)."""
        grid = affine_grid(images.shape, generator, self.rotation, self.zoom, self.shift, self.shear, self.squeeze)
        if self.elastic_alpha > 0:  # (the affine-only path draws exactly what it always has)
            grid = grid + elastic_field(images.shape, generator, self.elastic_alpha, self.elastic_sigma)
        return warp(images, grid)


def affine_grid(shape: torch.Size, generator: torch.Generator, rotation: float, zoom: float, shift: float,
                shear: float = 0.0, squeeze: float = 0.0) -> torch.Tensor:  # fmt: skip
    """A sampling grid (N x H x W x 2, coordinates in [-1, 1]) that rotates, zooms, shifts, shears and squeezes
    each image."""
    n, _, height, _ = shape
    uniform = torch.rand(n, 4, generator=generator, device=generator.device)
    uniform = uniform * 2 - 1  # n x 4, each in [-1, 1): rotation, zoom, shift x, shift y
    angle = uniform[:, 0] * math.radians(rotation)
    factor = 1 + uniform[:, 1] * zoom
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    offset = uniform[:, 2:] * (2 * shift / height)  # affine_grid coordinates span [-1, 1]
    theta = torch.stack([torch.stack([cos, -sin, offset[:, 0]], 1), torch.stack([sin, cos, offset[:, 1]], 1)], 1)
    if shear or squeeze:  # drawn after the others: without them, every other recipe draws what it always has
        more = torch.rand(n, 2, generator=generator, device=generator.device) * 2 - 1
        stretch = 1 + more[:, 1] * squeeze
        zero = torch.zeros_like(stretch)
        # The grid maps output to input pixels: the inverse of shearing x by k y and scaling by (s, 1 / s).
        inverse = torch.stack([torch.stack([1 / stretch, -more[:, 0] * shear * stretch], 1),
                               torch.stack([zero, stretch], 1)], 1)  # fmt: skip
        theta = torch.cat([theta[:, :, :2] @ inverse, theta[:, :, 2:]], 2)
    return F.affine_grid(theta, list(shape), align_corners=False)


def elastic_field(shape: torch.Size, generator: torch.Generator, alpha: float, sigma: float) -> torch.Tensor:
    """Simard's elastic distortion as a grid offset (N x H x W x 2): uniform noise in [-1, 1] per
    pixel and axis, one Gaussian blur of std sigma, times alpha pixels."""
    n, _, height, width = shape
    device = generator.device
    noise = torch.rand(n, 2, height, width, generator=generator, device=device) * 2 - 1
    # The blur is separable: rows then columns, each a product with a small Gaussian matrix, far
    # cheaper on 32x32 fields than a convolution with a 25x25 kernel.
    field = gaussian_matrix(height, sigma, device) @ noise @ gaussian_matrix(width, sigma, device).T
    field = field * alpha
    # One pixel in grid units (which span [-1, 1]): x offsets scale by 2/width, y by 2/height.
    return torch.stack([field[:, 0] * (2 / width), field[:, 1] * (2 / height)], dim=-1)


def gaussian_matrix(size: int, sigma: float, device) -> torch.Tensor:
    """size x size: row i holds a Gaussian of std sigma centred on i, summing to 1 (truncated at the edges)."""
    position = torch.arange(size, dtype=torch.float32, device=device)
    weights = torch.exp(-((position[:, None] - position[None, :]) ** 2) / (2 * sigma**2))
    return weights / weights.sum(1, keepdim=True)


def warp(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    # grid_sample fills outside the image with 0, so sample (x - background) and add it back.
    return F.grid_sample(images - BACKGROUND, grid, align_corners=False) + BACKGROUND
