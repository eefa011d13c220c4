"""Where a training step's time goes, in one process or under torchrun: why 2 processes x 1 thread
train slower than 1 process x 2 threads on a 2-core machine (see the README).

Times per step, on random data of MNIST's shape in the package's memory layout (each process's
share of a global batch of 64): the batch gather and its random distortion (what the training loader does), the forward,
backward and SGD step of the plain model, the same step through DistributedDataParallel as train.py wraps it (under
torchrun: the gradients' all-reduce overlapping the backward), and one gloo all-reduce of a tensor
the size of all gradients (61,706 floats: DDP sends C3's masked weights too) on its own.

    python -m scripts.step_cost                                     # 1 process, its share = 64
    torchrun --standalone --nproc-per-node 2 -m scripts.step_cost   # 2 processes, 32 each
    python -m scripts.step_cost --batch-size 256 --optimizer muon --compile   # the fast recipe's step, compiled too
    python -m scripts.step_cost --batch-size 256 --optimizer muon --muon-bfloat16   # as torch.optim.Muon computes it

--optimizer muon / muon-conv times the fast recipe's optimizer (Muon on C5 and F6, or on the filters too);
--compile adds the same step through torch.compile(model): its first call (the compilation, timed once) and
its time per step after.
"""

import os
import statistics
import time

from support.cli import CliParser, UserError, number, run_cli

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from LeNet5 import LeNet5
from support.augment import Augmentation
from support.devices import place_batch, place_model
from support.optimizers import make_optimizer
from support.recipes import resolve_recipe


def ms_per_call(fn, calls: int, warmup: int = 50, repeats: int = 5) -> float:
    """The median over `repeats` timings of `calls` calls, in ms per call (other work on a shared
    2-core machine makes single timings noisy)."""
    for _ in range(warmup):
        fn()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        timings.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(timings)


def main(argv: list[str] | None = None) -> None:
    p = CliParser(__doc__)
    p.add_argument("--batch-size", type=number(int, 1, 4096), default=64, help="the global batch, split over processes")
    p.add_argument("--steps", type=number(int, 1, 100_000), default=400, help="timed calls per repeat (5 repeats)")
    p.add_argument("--optimizer", choices=("sgd", "muon", "muon-conv"), default="sgd", help="the step's optimizer")
    p.add_argument("--compile", action="store_true", help="also time the step of torch.compile(model)")
    bf16 = "Muon's Newton-Schulz in bfloat16, as torch.optim.Muon runs it (the package: float32 on the CPU)"
    p.add_argument("--muon-bfloat16", action="store_true", help=bf16)
    args = p.parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.batch_size % world:
        raise UserError(f"--batch-size {args.batch_size} must split evenly over {world} processes")
    ns_dtype = torch.bfloat16 if args.muon_bfloat16 else None
    measure(args.batch_size, args.steps, args.optimizer, args.compile, ns_dtype)


def make_step_optimizer(model: torch.nn.Module, name: str, ns_dtype: torch.dtype | None) -> torch.optim.Optimizer:
    """The default recipe's SGD, or the fast recipe's Muon and AdamW (with the filters under Muon: muon-conv)."""
    recipe = (
        resolve_recipe("default", {}) if name == "sgd" else resolve_recipe("fast", {"muon_conv": name == "muon-conv"})
    )
    return make_optimizer(getattr(model, "_orig_mod", model), recipe, ns_dtype)  # (a compiled model's own parameters)


def measure(global_batch: int, steps: int, optimizer_name: str = "sgd", compiled: bool = False,
            ns_dtype: torch.dtype | None = None) -> None:  # fmt: skip
    """Print the per-step timings of this process (under torchrun: of every process, from rank 0)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    torch.manual_seed(rank)
    share = global_batch // world
    dataset = torch.randn(60_000 // world, 1, 32, 32)  # this process's preprocessed images
    generator, augmentation = torch.Generator().manual_seed(rank), Augmentation()
    x, y = place_batch(torch.randn(share, 1, 32, 32), "cpu"), torch.randint(0, 10, (share,))  # B/N x 1 x 32 x 32, B/N

    def load_batch() -> None:
        index = torch.randint(0, len(dataset), (share,), generator=generator)
        augmentation(dataset[index], generator)

    def step_of(model: torch.nn.Module):
        optimizer = make_step_optimizer(getattr(model, "module", model), optimizer_name, ns_dtype)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()

        return step

    parts = {
        "gather+distort": ms_per_call(load_batch, steps),
        "step": ms_per_call(step_of(place_model(LeNet5(), "cpu")), steps),
    }
    if compiled:
        step = step_of(torch.compile(place_model(LeNet5(), "cpu")))
        start = time.perf_counter()
        step()  # the compilation
        parts["compile (first call)"] = (time.perf_counter() - start) * 1e3
        parts["compiled step"] = ms_per_call(step, steps)
    if world > 1:
        # as train.py wraps it: C3's mask is a constant buffer, not broadcast every step
        ddp = DistributedDataParallel(place_model(LeNet5(), "cpu"), forward_sync_buffers=False)
        parts["DDP step"] = ms_per_call(step_of(ddp), steps)
        grads = torch.zeros(sum(p.numel() for p in LeNet5().parameters()))
        parts["all-reduce alone"] = ms_per_call(lambda: dist.all_reduce(grads), steps)
    timings = ", ".join(f"{name} {ms:.2f} ms" for name, ms in parts.items())
    line = f"{world} process(es) x {torch.get_num_threads()} thread(s), {share} images: {timings}"
    lines = [line]
    if world > 1:
        lines = [None] * world
        dist.all_gather_object(lines, line)
        dist.destroy_process_group()
    if rank == 0:
        print("\n".join(f"rank {r}: {text}" for r, text in enumerate(lines)))


if __name__ == "__main__":
    run_cli(main)
