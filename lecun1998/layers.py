"""The parts of LeNet-5 that the 1998 paper has and the modern network in LeNet5.py does not.

    paper            what it is                                                     here
    section II.B     input: background -0.1, foreground 1.175 (mean ~0, variance ~1)  PaperInput
    appendix A       squashing f(a) = A tanh(S a), A = 1.7159, S = 2/3              squash
    section II.B     S2, S4: the sum of a 2x2 block, times a trainable coefficient,  Subsampling
                     plus a trainable bias, then squashed
    section II.B     output: Euclidean RBF units y_i = sum_j (x_j - w_ij)^2, their    RBFOutput, BITMAPS
                     w_ij fixed at -1 or +1 from stylized 7x12 bitmaps of the digits
    appendix A       weights drawn uniformly in +-2.4 / F, F the unit's fan-in       initialize

LeNet5(lecun1998=True) builds the network from them; lecun1998/training.py holds the loss and the optimizer.
"""

import torch
from torch import nn

A, S = 1.7159, 2 / 3  # f(1) = 1 and f(-1) = -1: the targets +-1 lie where f bends most, not where it saturates


def squash(a: torch.Tensor) -> torch.Tensor:
    """The paper's sigmoid: f(a) = A tanh(S a)."""
    return 1.7159 * torch.tanh(a * (2.0 / 3.0))  # A and S written out: a TorchScript export reads no global


class PaperInput(nn.Module):
    """This package feeds every LeNet5 digits standardized with MNIST's mean and std (data.preprocess); the paper
    fed background -0.1 and ink 1.175. One fixed affine map turns the first into the second (padding included:
    both pad with the background), so that the network sees exactly the paper's values."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        # pixel p in 0..1: ours x = (p - mean) / std, the paper's z = -0.1 + 1.275 p, so z = 1.275 (std x + mean) - 0.1
        self.scale, self.shift = 1.275 * std, 1.275 * mean - 0.1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class Subsampling(nn.Module):
    """S2 and S4: each unit adds its 2x2 inputs, multiplies the sum by its map's trainable coefficient and adds its
    map's trainable bias (2 parameters a map); the squashing follows in the network."""

    def __init__(self, maps: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(maps))
        self.bias = nn.Parameter(torch.zeros(maps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        summed = 4 * nn.functional.avg_pool2d(x, 2)  # the sum of each 2x2 block
        return summed * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


# Figure 3 of the paper draws the output RBFs' parameter vectors as stylized 7x12 bitmaps of the ASCII characters
# ("#" +1, "." -1), F6 having 84 = 7 x 12 units. The paper prints them too small to read pixel by pixel: these are
# recreated by hand in its style (strokes one pixel wide, the digits filling the 7x12 box), not copied from it.
BITMAPS = {
    0: ["..###..", ".#...#.", "#.....#", "#.....#", "#.....#", "#.....#",
        "#.....#", "#.....#", "#.....#", "#.....#", ".#...#.", "..###.."],
    1: ["...#...", "..##...", ".#.#...", "...#...", "...#...", "...#...",
        "...#...", "...#...", "...#...", "...#...", "...#...", ".#####."],
    2: ["..###..", ".#...#.", "#.....#", "......#", ".....#.", "....#..",
        "...#...", "..#....", ".#.....", "#......", "#......", "#######"],
    3: [".#####.", "#.....#", "......#", "......#", ".....#.", "..###..",
        ".....#.", "......#", "......#", "......#", "#.....#", ".#####."],
    4: [".....#.", "....##.", "...#.#.", "..#..#.", ".#...#.", "#....#.",
        "#######", ".....#.", ".....#.", ".....#.", ".....#.", ".....#."],
    5: ["#######", "#......", "#......", "#......", "######.", "......#",
        "......#", "......#", "......#", "......#", "#.....#", ".#####."],
    6: ["..####.", ".#.....", "#......", "#......", "#.###..", "##...#.",
        "#.....#", "#.....#", "#.....#", "#.....#", ".#...#.", "..###.."],
    7: ["#######", "......#", "......#", ".....#.", ".....#.", "....#..",
        "....#..", "...#...", "...#...", "..#....", "..#....", "..#...."],
    8: ["..###..", ".#...#.", "#.....#", "#.....#", ".#...#.", "..###..",
        ".#...#.", "#.....#", "#.....#", "#.....#", ".#...#.", "..###.."],
    9: ["..###..", ".#...#.", "#.....#", "#.....#", "#.....#", ".#...##",
        "..###.#", "......#", "......#", "......#", ".....#.", ".####.."],
}  # fmt: skip


def bitmap_vectors() -> torch.Tensor:
    """10 x 84: each digit's bitmap, row by row, +1 for ink and -1 for background."""
    rows = [[1.0 if pixel == "#" else -1.0 for line in BITMAPS[d] for pixel in line] for d in range(10)]
    return torch.tensor(rows)


class RBFOutput(nn.Module):
    """Ten Euclidean radial basis function units: y_i = sum_j (x_j - w_ij)^2, the squared distance of F6's 84
    outputs to digit i's bitmap. The w_ij are fixed (a buffer, not a parameter). A penalty: the smaller, the
    likelier; forward() returns -y, so that argmax, softmax and the rest of the package read it as logits."""

    def __init__(self):
        super().__init__()
        self.register_buffer("centres", bitmap_vectors())

    def penalties(self, x: torch.Tensor) -> torch.Tensor:
        return (x.unsqueeze(1) - self.centres.unsqueeze(0)).pow(2).sum(-1)  # N x 10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.penalties(x)


def initialize(layer: nn.Module, mask: torch.Tensor | None = None) -> None:
    """Appendix A: every weight and bias uniform in +-2.4 / F, F the number of inputs of the unit it belongs to
    (with C3's table, each map's own count: 75, 100 or 150)."""
    with torch.no_grad():
        if isinstance(layer, Subsampling):
            fan_in = torch.full_like(layer.weight, 4.0)
        else:
            connected = mask.expand_as(layer.weight) if mask is not None else torch.ones_like(layer.weight)
            fan_in = connected.flatten(1).sum(1)  # per output unit
        bound = 2.4 / fan_in
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        layer.weight.uniform_(-1, 1).mul_(bound.view(shape))
        if mask is not None:
            layer.weight.mul_(mask)
        layer.bias.uniform_(-1, 1).mul_(bound)
