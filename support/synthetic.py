"""A synthetic MNIST, for the tests and for `bench.py --quick`: learnable fake digits of the real shapes and
types, made in memory (no real data needed). Digit k lights a 6x6 block at a place of its own, over faint noise."""

import torch

from support.idx import MNIST


def synthetic_digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 n x 28 x 28 images, int64 n labels): label k lights a 6x6 block at a position of its own."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 40, (n, 28, 28), generator=g, dtype=torch.uint8)
    rows, cols = 4 + 6 * (labels // 4), 4 + 6 * (labels % 4)
    offsets = torch.arange(6)
    r = (rows[:, None, None] + offsets[None, :, None]).expand(n, 6, 6)
    c = (cols[:, None, None] + offsets[None, None, :]).expand(n, 6, 6)
    images[torch.arange(n)[:, None, None].expand(n, 6, 6), r, c] = 255
    return images, labels


def synthetic_mnist(n_train: int, n_test: int, seed: int = 0) -> MNIST:
    return MNIST(*synthetic_digits(n_train, seed), *synthetic_digits(n_test, seed + 1))
