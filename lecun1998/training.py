"""How the 1998 paper trained LeNet-5: its loss (section II.C), its optimizer, stochastic diagonal
Levenberg-Marquardt, with the curvature it needs (appendix C), and its learning-rate schedule.

The loss. The RBF penalties y_i (lecun1998/layers.py) are turned into a loss by the paper's MAP criterion:

    E = y_D + log(exp(-j) + sum_i exp(-y_i))

y_D, the correct class's penalty, is pushed down; the log term pushes the others up, but not without bound:
the constant j (the paper does not print its value) caps it. With the network's output being -y, that is
cross-entropy over the ten outputs and one more, fixed at -j.

The optimizer. Each parameter w_k gets its own step: w_k <- w_k - eps / (mu + h_kk) * dE/dw_k, with h_kk an
estimate of the loss's second derivative with respect to w_k, re-computed on 500 patterns before each pass
over the training set, mu = 0.02, and eps the global step of the schedule below. h_kk is the Gauss-Newton
approximation of the diagonal of the Hessian, back-propagated the way appendix C describes: second
derivatives flow backwards like gradients, but through squared weights and squared slopes, and the terms
between different units are dropped.
"""

import torch
import torch.nn.functional as F
from torch import nn

from lecun1998.layers import A, S, Subsampling

J = 0.1  # the MAP criterion's constant: the paper does not print it (docs/lecun1998.md: why this value)
MU = 0.02  # appendix C: keeps the step finite where the curvature is near zero
CURVATURE_PATTERNS = 500  # appendix C: the curvature is estimated on this many patterns before each pass
# Appendix C's global step per pass: 0.0005 for 2 passes, 0.0002 for 3, 0.0001 for 3, 0.00005 for 4, then 0.00001.
STEPS = [(2, 5e-4), (3, 2e-4), (3, 1e-4), (4, 5e-5)]
FINAL_STEP = 1e-5


def global_step(epoch: int) -> float:
    """The paper's eps for a pass over the training set (epochs counted from 0)."""
    for passes, step in STEPS:
        if epoch < passes:
            return step
        epoch -= passes
    return FINAL_STEP


def map_loss(outputs: torch.Tensor, labels: torch.Tensor, j: float = J) -> torch.Tensor:
    """The MAP criterion, summed over the patterns (the paper's steps are one pattern's): outputs are -penalties."""
    rubbish = torch.full_like(outputs[:, :1], -j)  # the extra class whose penalty is the constant j
    return F.cross_entropy(torch.cat([outputs, rubbish], dim=1), labels, reduction="sum")


class SDLM(torch.optim.Optimizer):
    """Stochastic diagonal Levenberg-Marquardt: w <- w - lr / (mu + h) * grad, h per parameter element
    (set_curvature, before each pass). Without a curvature it is plain gradient descent at lr / mu.

    The paper steps after every pattern. With batches of B patterns (patterns_per_step) the gradient is the
    batch's mean, and the step is B times the paper's: B of its steps, taken at once."""

    def __init__(self, params, lr: float = 5e-4, mu: float = MU, patterns_per_step: int = 1):
        super().__init__(params, {"lr": lr, "mu": mu, "patterns_per_step": patterns_per_step})
        # Not optimizer state: it is estimated anew before every pass, so a run resumed at a pass's start (which
        # is where resume files are made) needs none saved.
        self.curvature: dict[torch.Tensor, torch.Tensor] = {}

    def set_curvature(self, curvature: list[torch.Tensor]) -> None:
        """h for every parameter, in the order of the parameter groups."""
        parameters = [p for group in self.param_groups for p in group["params"]]
        if len(parameters) != len(curvature):
            raise ValueError(f"SDLM: {len(parameters)} parameters but {len(curvature)} curvature tensors")
        self.curvature = {p: h.detach().clone() for p, h in zip(parameters, curvature)}

    @torch.no_grad()
    def step(self, closure=None) -> None:
        if closure is not None:
            raise ValueError("SDLM.step takes no closure")
        for group in self.param_groups:
            scale = group["lr"] * group["patterns_per_step"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                h = self.curvature.get(p)
                p.addcdiv_(p.grad, h + group["mu"] if h is not None else torch.full_like(p, group["mu"]), value=-scale)


@torch.no_grad()
def curvature(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, j: float | None = J) -> list[torch.Tensor]:
    """The Gauss-Newton estimate of d2E/dw2 for every parameter of a LeNet5(lecun1998=True), averaged over the
    patterns, in model.parameters() order. Second derivatives are back-propagated layer by layer (appendix C):

        d2E/da2 = f'(a)^2 d2E/dx2          through a squashing x = f(a)
        d2E/dx2 = sum_i w_i^2 d2E/da_i2    through a weighted sum a_i = sum w_i x + b (a convolution likewise)
        d2E/dw2 = x^2 d2E/da2,  d2E/db2 = d2E/da2

    and, at the top, for the RBF penalties and the MAP criterion (p_i = exp(-y_i) / (exp(-j) + sum exp(-y)),
    p_j = 1 - sum_i p_i the extra class's): d2E/dy_i2 = p_i (1 - p_i), and at F6's output
    d2E/dx2 = sum_i (2 (x - w_i))^2 d2E/dy_i2 + 2 p_j (the RBFs' own curvature, positive).
    j=None: cross-entropy over the ten outputs instead (no extra class, so no p_j term).
    """
    layers, stack = _record(model, images)
    x6 = stack.pop()  # F6's output
    penalties = model.output.penalties(x6)
    extra = [] if j is None else [torch.full_like(penalties[:, :1], -j)]
    p = torch.softmax(torch.cat([-penalties, *extra], 1), 1)[:, :10]
    second = p * (1 - p)  # d2E/dy2, N x 10
    distance = 2 * (x6.unsqueeze(1) - model.output.centres.unsqueeze(0))  # N x 10 x 84
    # Each RBF is a squared distance, whose own second derivative, 2, enters through dE/dy: sum_i (1[i=D] - p_i) 2
    # = 2 p_j, p_j the extra class's share (it is the squared error's curvature while all penalties are large).
    g2 = (distance.pow(2) * second.unsqueeze(2)).sum(1) + 2 * (1 - p.sum(1, keepdim=True))  # d2E/dx2 at F6's output
    curvatures: dict[int, torch.Tensor] = {}
    for layer, inputs, pre in reversed(layers):
        g2 = g2 * _slope(pre).pow(2)  # through the squashing
        for parameter, h in _second_derivatives(layer, inputs, g2).items():
            curvatures[id(parameter)] = h / len(images)
        g2 = _backward_second(layer, inputs, g2)
    return [curvatures.get(id(p), torch.zeros_like(p)) for p in model.parameters()]


def _slope(pre: torch.Tensor) -> torch.Tensor:
    """f'(a) of the squashing f(a) = A tanh(S a)."""
    return A * S * (1 - torch.tanh(S * pre).pow(2))


def _record(model: nn.Module, images: torch.Tensor) -> tuple[list, list]:
    """The forward pass, keeping each layer's input and pre-squashing sum: [(layer, input, sum)], [F6's output]."""
    layers, x = [], model.input(images)
    for layer in (model.c1, model.s2, model.c3, model.s4, model.c5, model.f6):
        if layer is model.c5:
            x = torch.flatten(x, 1)
        pre = layer(x)
        layers.append((layer, x, pre))
        x = A * torch.tanh(S * pre)
    return layers, [x]


def _second_derivatives(layer: nn.Module, x: torch.Tensor, g2: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """d2E/dw2 and d2E/db2 of one layer, summed over the patterns, from d2E/da2 (g2) at its sums."""
    if isinstance(layer, nn.Conv2d):
        mask = getattr(layer, "mask", None)
        weight = torch.nn.grad.conv2d_weight(x.pow(2), layer.weight.shape, g2)
        return {layer.weight: weight * mask if mask is not None else weight, layer.bias: g2.sum((0, 2, 3))}
    if isinstance(layer, Subsampling):
        summed = 4 * F.avg_pool2d(x, 2)
        return {layer.weight: (summed.pow(2) * g2).sum((0, 2, 3)), layer.bias: g2.sum((0, 2, 3))}
    return {layer.weight: g2.t() @ x.pow(2), layer.bias: g2.sum(0)}  # nn.Linear


def _backward_second(layer: nn.Module, x: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """d2E/dx2 at the layer's input, from d2E/da2 (g2) at its sums: the weights squared."""
    if isinstance(layer, nn.Conv2d):
        weight = layer.weight * layer.mask if hasattr(layer, "mask") else layer.weight
        return torch.nn.grad.conv2d_input(x.shape, weight.pow(2), g2)
    if isinstance(layer, Subsampling):
        return F.interpolate(g2 * layer.weight.view(1, -1, 1, 1).pow(2), scale_factor=2, mode="nearest")
    second = g2 @ layer.weight.pow(2)  # nn.Linear
    return second.view(-1, 16, 5, 5) if layer.in_features == 400 else second  # (C5's input was S4's maps)
