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


def make_optimizer(model: LeNet5, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "sdlm":  # the 1998 paper's; its curvature is set before each pass (train.py)
        return SDLM(model.parameters(), lr=recipe.lr, mu=recipe.sdlm_mu, patterns_per_step=recipe.batch_size)
    if recipe.optimizer == "sgd":
        nesterov = recipe.nesterov and recipe.momentum > 0
        return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, nesterov=nesterov,
                               weight_decay=recipe.weight_decay)  # fmt: skip
    if recipe.optimizer == "muon":
        return MuonAndAdamW(model, recipe.lr, (recipe.momentum, recipe.beta2), recipe.weight_decay, recipe.muon_conv)
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
                 conv_filters: bool = False):  # fmt: skip
        convs = (model.c1, model.c3) if conv_filters else ()
        # (filters, their flattened copy that Muon steps, C3's table or None)
        self.flattened = [(c.weight, torch.nn.Parameter(c.weight.detach().flatten(1).clone()), getattr(c, "mask", None))
                          for c in convs]  # fmt: skip
        matrices = [model.c5.weight, model.f6.weight, *(flat for _, flat, _ in self.flattened)]
        stepped_flat = [filters for filters, _, _ in self.flattened]
        rest = [p for p in model.parameters() if all(p is not m for m in matrices + stepped_flat)]
        self.muon = torch.optim.Muon(matrices, lr=lr, weight_decay=weight_decay)
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
