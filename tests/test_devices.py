"""devices.py: the device choice and the memory layout."""

from support.cli import UserError

import pytest
import torch

from LeNet5 import LeNet5
from support.devices import MEMORY_FORMAT, choose_device, place_batch, place_model


def test_cpu_is_always_there_and_auto_gives_a_usable_device():
    assert choose_device("cpu") == torch.device("cpu")
    auto = choose_device("auto")
    assert torch.ones(2, device=auto).sum().item() == 2  # a device tensors can live on


@pytest.mark.parametrize("name", ["cuda", "mps", "xpu"])
def test_an_absent_accelerator_is_a_user_error(name):
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if accelerator is not None and accelerator.type == name:
        pytest.skip(f"this machine has {name}")
    with pytest.raises(UserError, match=f"--device {name} is not available on this machine"):
        choose_device(name)


def test_model_and_batches_share_one_layout():
    model = place_model(LeNet5(), "cpu")
    batch = place_batch(torch.randn(3, 1, 32, 32), "cpu")
    assert model.c1.weight.is_contiguous(memory_format=MEMORY_FORMAT)
    assert batch.is_contiguous(memory_format=MEMORY_FORMAT)
