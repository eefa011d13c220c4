"""The optimizer a recipe names: SGD, Adam, AdamW, or Muon with AdamW beside it.

Muon (Jordan et al., 2024; ``torch.optim.Muon``) replaces each update of a weight matrix by the
nearest orthogonal matrix (a few Newton-Schulz iterations), so every direction of the matrix moves
at the same rate. It is made for the 2-D weights between hidden layers; its authors leave the rest
(convolutions here, biases, the output layer) to an Adam-type optimizer. Here that split is one
optimizer object, so the schedule, the checkpoint and an exact resume treat it like any other.
"""

import torch

from lecun1998.training import SDLM
from LeNet5 import LeNet5
from support.recipes import Recipe


def make_optimizer(model: LeNet5, recipe: Recipe, ns_dtype: torch.dtype | None = None) -> torch.optim.Optimizer:
    """The optimizer `recipe` names over `model`'s parameters (ns_dtype: Muon's Newton-Schulz precision, None: by
    device)."""
    if recipe.optimizer == "sdlm":  # the 1998 paper's; its curvature is set before each pass (train.py)
        return SDLM(model.parameters(), lr=recipe.lr, mu=recipe.sdlm_mu, patterns_per_step=recipe.batch_size)
    if recipe.optimizer == "sgd":
        nesterov = recipe.nesterov and recipe.momentum > 0
        return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, nesterov=nesterov,
                               weight_decay=recipe.weight_decay)  # fmt: skip
    if recipe.optimizer == "muon":
        betas = (recipe.momentum, recipe.beta2)
        return MuonAndAdamW(model, recipe.lr, betas, recipe.weight_decay, recipe.muon_conv, ns_dtype)
    adam = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[recipe.optimizer]
    # fused: one kernel for all parameters (CPU, CUDA, MPS, XPU); the default foreach step costs more than SGD's
    return adam(model.parameters(), lr=recipe.lr, betas=(recipe.momentum, recipe.beta2),
                weight_decay=recipe.weight_decay, fused=True)  # fmt: skip


class MuonAndAdamW(torch.optim.Optimizer):
    """torch.optim.Muon on the weight matrices of the hidden fully-connected layers C5 and F6 (58,080 of
    the 60,806 parameters), fused AdamW with `betas` on the rest; the same learning rate and decoupled
    weight decay for both. Muon keeps its own momentum, torch's default 0.95 (Nesterov).

    conv_filters: Muon on C1's and C3's filters too, each layer's filters flattened to a matrix (one row per
    output map) as airbench does; torch's Muon takes only 2-D parameters, so it steps a flattened copy that is
    synced from the filters before each step and back after it (C3's table re-applied: its cut weights stay 0).

    Both halves share this object's param_groups and state, so the scheduler sets both learning rates
    and state_dict() / load_state_dict() are torch.optim.Optimizer's own.
    """

    def __init__(self, model: LeNet5, lr: float, betas: tuple[float, float], weight_decay: float,
                 conv_filters: bool = False, ns_dtype: torch.dtype | None = None):  # fmt: skip
        convs = (model.c1, model.c3) if conv_filters else ()
        # (filters, their flattened copy that Muon steps, C3's table or None)
        self.flattened = [(c.weight, torch.nn.Parameter(c.weight.detach().flatten(1).clone()), getattr(c, "mask", None))
                          for c in convs]  # fmt: skip
        matrices = [model.c5.weight, model.f6.weight, *(flat for _, flat, _ in self.flattened)]
        stepped_flat = [filters for filters, _, _ in self.flattened]
        rest = [p for p in model.parameters() if all(p is not m for m in matrices + stepped_flat)]
        if ns_dtype is None:  # torch's bfloat16 where matrix units have it; float32 on the CPU (docs/speed.md)
            ns_dtype = torch.float32 if model.c5.weight.device.type == "cpu" else torch.bfloat16
        self.muon = Muon(matrices, lr=lr, weight_decay=weight_decay, ns_dtype=ns_dtype)
        self.adamw = torch.optim.AdamW(rest, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)
        super().__init__(self.muon.param_groups + self.adamw.param_groups, defaults={})
        self._share_groups_and_state()

    def _share_groups_and_state(self) -> None:
        """Point the two halves at this object's groups and state (after construction and after a load,
        which replaces both)."""
        self.muon.param_groups, self.adamw.param_groups = self.param_groups[:1], self.param_groups[1:]
        self.muon.state = self.adamw.state = self.state

    @torch.no_grad()
    def step(self, closure=None) -> None:
        if closure is not None:
            raise ValueError("MuonAndAdamW.step takes no closure")
        for filters, flat, _ in self.flattened:
            flat.copy_(filters.flatten(1))
            flat.grad = None if filters.grad is None else filters.grad.flatten(1)
        self.muon.step()
        self.adamw.step()
        for filters, flat, mask in self.flattened:
            filters.copy_(flat.view_as(filters) if mask is None else flat.view_as(filters) * mask)

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for filters, _, _ in self.flattened:  # not in a group (their flattened copies are), so cleared here
            filters.grad = None if set_to_none or filters.grad is None else filters.grad.zero_()

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._share_groups_and_state()


class Muon(torch.optim.Muon):
    """torch.optim.Muon, step for step, with its Newton-Schulz iterations in `ns_dtype`. Torch runs them in
    bfloat16; a CPU without bfloat16 matrix instructions emulates those, many times slower than float32
    (docs/speed.md), and float32 is the more exact of the two."""

    def __init__(self, params, ns_dtype: torch.dtype = torch.bfloat16, **kwargs):
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None) -> None:
        if closure is not None:
            raise ValueError("Muon.step takes no closure")
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = orthogonalize(update, group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * max(1, p.shape[0] / p.shape[1]) ** 0.5)  # torch's "original" scaling


def orthogonalize(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:  # fmt: skip
    """Muon's quintic Newton-Schulz iteration (as torch.optim.Muon computes it), in `dtype`: about U V^T of g's SVD."""
    a, b, c = coefficients
    x = g.to(dtype)
    wide = x.T if g.size(0) > g.size(1) else x
    wide = wide / wide.norm().clamp(min=eps)
    for _ in range(steps):
        gram = wide @ wide.T
        wide = torch.addmm(wide, torch.addmm(gram, gram, gram, beta=b, alpha=c), wide, beta=a)
    return (wide.T if g.size(0) > g.size(1) else wide).to(g.dtype)
