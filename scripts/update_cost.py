"""What each part of a training step costs on this machine: the optimizer's update (SGD as the default
recipe builds it, Adam as optimizers.make_optimizer builds it and in PyTorch's default foreach kernel), the
weight average's update, the loss with and without label smoothing, against one forward and backward
pass of a batch of 64. Microseconds per call, the median of --repeats timings. The Adam values are
the Adam candidate for `fast` in docs/outputs/tune_fast_output.txt (trial 14's, rounded).

    python -m scripts.update_cost
"""

from support.cli import CliParser, number, run_cli

import torch
import torch.nn.functional as F

from LeNet5 import LeNet5
from scripts.step_cost import ms_per_call
from support.devices import place_batch, place_model
from support.optimizers import make_optimizer
from support.recipes import resolve_recipe
from train import WeightAverage

ADAM = {"optimizer": "adam", "momentum": 0.88, "beta2": 0.99, "lr": 1e-12}  # (lr: the weights barely move)


def main(argv: list[str] | None = None) -> None:
    p = CliParser(__doc__)
    p.add_argument("--repeats", type=number(int, 1, 100), default=5, help="timings per part (the median is shown)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = place_model(LeNet5(), "cpu")
    images, labels = place_batch(torch.randn(64, 1, 32, 32), "cpu"), torch.randint(0, 10, (64,))
    F.cross_entropy(model(images), labels).backward()  # gradients for the optimizers to use
    adam_foreach = torch.optim.Adam(model.parameters(), lr=ADAM["lr"], betas=(ADAM["momentum"], ADAM["beta2"]))
    logits = model(images).detach().requires_grad_()
    average = WeightAverage(model, 0.99)

    def forward_backward() -> None:
        F.cross_entropy(model(images), labels).backward()

    parts = {  # (every call does the same work)
        "SGD step (default recipe)": make_optimizer(model, resolve_recipe("default", {"lr": 1e-12})).step,
        "Adam step, fused (train.py)": make_optimizer(model, resolve_recipe("default", ADAM)).step,
        "Adam step, foreach (torch's default)": adam_foreach.step,
        "weight average update": lambda: average.update(model),
        "loss + backward": lambda: F.cross_entropy(logits, labels).backward(),
        "loss + backward, label smoothing": lambda: F.cross_entropy(logits, labels, label_smoothing=0.07).backward(),
    }
    print(f"{'per call, median of ' + str(args.repeats):<40} {'us':>8}")
    for name, call in parts.items():
        print(f"{name:<40} {1e3 * ms_per_call(call, 1000, repeats=args.repeats):>8.1f}", flush=True)
    whole = 1e3 * ms_per_call(forward_backward, 100, repeats=args.repeats)
    print(f"{'forward + backward, batch of 64':<40} {whole:>8.1f}")


if __name__ == "__main__":
    run_cli(main)
