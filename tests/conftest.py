"""Shared fixtures: tiny IDX files written on the fly (no real MNIST needed), small models."""

import gzip
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from data import IMAGE_MAGIC, LABEL_MAGIC, MNIST_FILES, IdxFile  # noqa: E402

N_TRAIN, N_TEST = 96, 40


def idx_bytes(array: torch.Tensor, magic: int) -> bytes:
    """Serialize a uint8 tensor in the IDX format (big-endian header: magic, then each dimension)."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.to(torch.uint8).numpy().tobytes()


def synthetic_digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable fake digits: label k lights a 6x6 block at a position of its own, plus faint noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 40, (n, 28, 28), generator=g, dtype=torch.uint8)
    for i, k in enumerate(labels.tolist()):
        row, col = 4 + 6 * (k // 4), 4 + 6 * (k % 4)
        images[i, row : row + 6, col : col + 6] = 255
    return images, labels


def write_idx_dir(directory: Path, gz: bool = True, n_train: int = N_TRAIN, n_test: int = N_TEST) -> Path:
    """The four files under their official names, gzip-compressed or raw."""
    directory.mkdir(parents=True, exist_ok=True)
    splits = {"train": synthetic_digits(n_train, 0), "test": synthetic_digits(n_test, 1)}
    for key, spec in MNIST_FILES.items():
        images, labels = splits[key.split("_")[0]]
        payload = idx_bytes(images, IMAGE_MAGIC) if spec.magic == IMAGE_MAGIC else idx_bytes(labels, LABEL_MAGIC)
        path = directory / (spec.name + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(payload) if gz else payload)
    return directory


def spec_of(directory: Path) -> dict[str, IdxFile]:
    """A strict spec (count and MD5) that matches the synthetic files, to exercise the checksum and cache paths."""
    spec = {}
    for key, official in MNIST_FILES.items():
        path = next(directory.glob(official.name + "*"))
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        count = int.from_bytes(raw[4:8], "big")
        spec[key] = IdxFile(official.name, official.magic, count, hashlib.md5(raw).hexdigest())
    return spec


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    return write_idx_dir(tmp_path / "mnist")


@pytest.fixture(scope="session")
def real_mnist_dir() -> Path:
    directory = os.environ.get("MNIST_DIR")
    if not directory or not Path(directory).is_dir():
        pytest.skip("set MNIST_DIR to the folder with the real MNIST files")
    return Path(directory)


def run_script(*args: str, cwd: Path = PROJECT_DIR, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run one of the project's entry points as a user would."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    env.pop("MNIST_DIR", None)  # each test says where its data is
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tiny_model():
    from LeNet5 import LeNet5

    torch.manual_seed(0)
    return LeNet5()
