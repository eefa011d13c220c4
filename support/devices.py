"""Where the model runs and in what memory layout: the one place that chooses a device and places tensors."""

from support.cli import UserError, one_line

import torch
from torch import nn

from support.distributed import ONE, World, agree

# channels_last (NHWC) is the layout oneDNN's CPU convolutions work in natively, so the batches and
# the model are kept in it rather than converted at every convolution.
MEMORY_FORMAT = torch.channels_last


def choose_device(name: str) -> torch.device:
    """'auto': the accelerator torch finds (torch.accelerator: CUDA, MPS, XPU, ...), else the CPU.
    An explicit choice that this machine lacks is a UserError."""
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if name == "auto":
        return accelerator or torch.device("cpu")
    if name != "cpu" and (accelerator is None or accelerator.type != name):
        raise UserError(f"--device {name} is not available on this machine; use --device cpu or auto")
    return torch.device(name)


def place_model(model: nn.Module, device: torch.device | str) -> nn.Module:
    return model.to(device, memory_format=MEMORY_FORMAT)


def place_batch(images: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    return images.to(device, non_blocking=True).contiguous(memory_format=MEMORY_FORMAT)


def compile_network(model: nn.Module, batch_size: int, device: torch.device | str, world: World = ONE) -> nn.Module:
    """torch.compile(model), compiled now on a batch of the training's shape: a machine that cannot compile
    (no C++ compiler, say) is told so before the first step, in one line, rather than in a traceback mid-epoch.
    Under torchrun each process compiles the plain model (no collective in the warm-up) and all agree on the
    outcome, so one that cannot compile ends the job instead of leaving the others waiting. Inductor keeps what
    it compiled in its cache on disk, so a later run of the same model starts in seconds."""
    compiled, error = torch.compile(model), None
    try:
        compiled(place_batch(torch.zeros(batch_size, 1, 32, 32), device)).sum().backward()
    except Exception as err:  # (torch's compile errors have no common public base)
        first = next(iter(str(err).strip().splitlines()), "")  # (torch adds paragraphs on its debugging switches)
        error = UserError(one_line(f"--compile: torch.compile failed ({type(err).__name__}: {first}); run without "
                                   "--compile"))  # fmt: skip
    agree(error, world)
    model.zero_grad(set_to_none=True)  # (the warm-up's gradients are not the first step's)
    return compiled
