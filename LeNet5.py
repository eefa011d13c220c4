"""LeNet-5 (LeCun et al., 1998), the classic version: tanh units and average pooling.

    layer  operation                                  output     trainable parameters
    input  normalized digit, padded 28 -> 32          1x32x32
    C1     conv 6 @ 5x5 + tanh                        6x28x28      156
    S2     average pool 2x2, stride 2                 6x14x14        0
    C3     conv 16 @ 5x5 + tanh, LeCun's table        16x10x10   1,516  (2,416 fully connected)
    S4     average pool 2x2, stride 2                 16x5x5         0
    C5     fully connected 400 -> 120 + tanh          120       48,120
    F6     fully connected 120 -> 84 + tanh           84        10,164
    output fully connected 84 -> 10 (logits)          10           850
                                                      total     60,806  (61,706)

The output is logits: ``nn.CrossEntropyLoss`` applies log-softmax itself, and
``torch.softmax(logits, dim=1)`` gives probabilities.

LeNet5(lecun1998=True) is the network as the 1998 paper built it (lecun1998/layers.py): the same C1, C3 (its
table), C5 and F6, with the paper's squashing 1.7159 tanh(2/3 a) after every layer, S2 and S4 with a trainable
coefficient and bias per map (12 and 32 parameters), the paper's input scale and weight initialization, and
ten RBF units with fixed bitmaps in place of the output layer: 60,000 trainable parameters. Its output is the
RBF penalties, negated, so that it reads as logits too.
"""

import torch
from torch import nn

from lecun1998.layers import PaperInput, RBFOutput, Subsampling, initialize, squash

# The input contract of every LeNet5 trained here, recorded in each checkpoint: a 28x28 MNIST-style
# digit (ink 255 on background 0) padded by 2 pixels to 32x32, scaled to 0..1, then standardized
# with the MNIST training set's mean and std. data.preprocess applies it; export.py documents it.
INPUT_NORMALIZATION = {"pad": 2, "mean": 0.1307, "std": 0.3081}

# LeCun 1998, Table I: which S2 maps (columns 0-5) each C3 map (rows 0-15) reads.
C3_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 0), (5, 0, 1),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 0), (4, 5, 0, 1), (5, 0, 1, 2),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)  # fmt: skip


def c3_connection_mask() -> torch.Tensor:
    """The C3 table as a 16x6x1x1 0/1 mask that broadcasts over a conv weight (16x6x5x5)."""
    mask = torch.zeros(16, 6, 1, 1)
    for out_map, in_maps in enumerate(C3_TABLE):
        mask[out_map, list(in_maps)] = 1.0
    return mask


class MaskedConv2d(nn.Conv2d):
    """A Conv2d whose weight is multiplied by a fixed 0/1 mask in every forward pass.

    The masked weights start at exactly zero and their gradient is exactly zero
    (d(w*m)/dw = m = 0), so SGD, momentum and weight decay all leave them at zero.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask: torch.Tensor):
        super().__init__(in_channels, out_channels, kernel_size)
        self.register_buffer("mask", mask)
        with torch.no_grad():
            self.weight.mul_(self.mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)

    def effective_weight_count(self) -> int:
        return int(self.mask.expand_as(self.weight).sum().item())


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, c3_table: bool = True, lecun1998: bool = False):
        super().__init__()
        self.config = {"num_classes": num_classes, "c3_table": c3_table}
        if lecun1998:
            if num_classes != 10:
                raise ValueError("the 1998 network's output is the ten digits' bitmaps: num_classes is 10")
            self.config["lecun1998"] = True
        self.lecun1998 = lecun1998
        # the 1998 network only: the paper's input scale (an nn.Identity, which holds nothing, in the modern one)
        self.input = PaperInput(INPUT_NORMALIZATION["mean"], INPUT_NORMALIZATION["std"]) if lecun1998 else nn.Identity()
        self.c1 = nn.Conv2d(1, 6, kernel_size=5)  # 1x32x32 -> 6x28x28
        self.s2 = Subsampling(6) if lecun1998 else nn.AvgPool2d(2)  # -> 6x14x14
        if c3_table:
            self.c3 = MaskedConv2d(6, 16, 5, c3_connection_mask())  # -> 16x10x10
        else:
            self.c3 = nn.Conv2d(6, 16, kernel_size=5)  # -> 16x10x10
        self.s4 = Subsampling(16) if lecun1998 else nn.AvgPool2d(2)  # -> 16x5x5
        self.c5 = nn.Linear(16 * 5 * 5, 120)  # -> 120
        self.f6 = nn.Linear(120, 84)  # -> 84
        self.output = RBFOutput() if lecun1998 else nn.Linear(84, num_classes)  # -> 10 logits
        if lecun1998:
            for layer in (self.c1, self.s2, self.c3, self.s4, self.c5, self.f6):
                initialize(layer, getattr(layer, "mask", None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: N x 1 x 32 x 32
        if self.lecun1998:
            return self.forward_1998(x)
        x = self.s2(torch.tanh(self.c1(x)))  # N x 6 x 14 x 14
        x = self.s4(torch.tanh(self.c3(x)))  # N x 16 x 5 x 5
        x = torch.tanh(self.c5(torch.flatten(x, 1)))  # N x 120
        x = torch.tanh(self.f6(x))  # N x 84
        return self.output(x)  # N x 10

    def forward_1998(self, x: torch.Tensor) -> torch.Tensor:
        """The paper's network: every layer's weighted sum squashed, the output the RBF penalties (negated)."""
        x = squash(self.s2(squash(self.c1(self.input(x)))))  # N x 6 x 14 x 14
        x = squash(self.s4(squash(self.c3(x))))  # N x 16 x 5 x 5
        x = squash(self.c5(torch.flatten(x, 1)))  # N x 120
        x = squash(self.f6(x))  # N x 84
        return self.output(x)  # N x 10: -(squared distance to each digit's bitmap)

    def feature_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """C1 and C3 activations (after tanh, or the paper's squashing), for looking inside the network."""
        if self.lecun1998:
            c1 = squash(self.c1(self.input(x)))
            return {"C1": c1, "C3": squash(self.c3(squash(self.s2(c1))))}
        c1 = torch.tanh(self.c1(x))
        c3 = torch.tanh(self.c3(self.s2(c1)))
        return {"C1": c1, "C3": c3}


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters that can be non-zero: the C3 table's masked weights do not count."""
    return sum(n for _, _, n in layer_table(model))


def layer_table(model: nn.Module) -> list[tuple[str, str, int]]:
    """(layer name, layer description, effective trainable parameters) for each parameterized layer."""
    rows = []
    for name, module in model.named_children():
        if isinstance(module, nn.Identity):  # (the modern network's empty input stage)
            continue
        params = sum(p.numel() for p in module.parameters() if p.requires_grad)
        if isinstance(module, MaskedConv2d):
            params += module.effective_weight_count() - module.weight.numel()
        rows.append((name.upper(), _describe(module), params))
    return rows


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        kind = "conv, LeCun table" if isinstance(module, MaskedConv2d) else "conv"
        return f"{kind} {module.out_channels}@{module.kernel_size[0]}x{module.kernel_size[1]}"
    if isinstance(module, nn.Linear):
        return f"fully connected {module.in_features} -> {module.out_features}"
    if isinstance(module, nn.AvgPool2d):
        return "average pool 2x2"
    descriptions = {
        PaperInput: "input scaled to the paper's -0.1..1.175",
        Subsampling: "2x2 sum x coefficient + bias, squashed",
        RBFOutput: "Euclidean RBF 84 -> 10, fixed bitmaps",
    }
    return descriptions.get(type(module), type(module).__name__)
