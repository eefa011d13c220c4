"""Shared fixtures: tiny IDX data sets written on the fly (no real MNIST needed), entry points run
in-process (fast) or as real processes (when the process itself is under test), small models."""

import importlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from support.cli import PROJECT_DIR, run_cli

import pytest
import torch

from data import write_mnist
from helper import save_checkpoint
from support import signals
from support.synthetic import synthetic_digits, synthetic_mnist

N_TRAIN, N_TEST = 96, 40
# main.py's flags for a tiny run on those sets (your own IDX files, never a download, batches of 16)
TINY = ["--allow-custom-data", "--no-download", "--batch-size", "16"]

if os.environ.get("PYTEST_XDIST_WORKER"):  # pyproject.toml runs two test processes (pytest-xdist)
    # They share the machine's cores: one thread each, and for the processes they start, or they trip
    # over each other's threads (the suite took longer in two processes than in one).
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def write_idx_dir(directory: Path, gz: bool = True, n_train: int = N_TRAIN, n_test: int = N_TEST) -> Path:
    """The four files under their official names, gzip-compressed or raw."""
    return write_mnist(directory, synthetic_mnist(n_train, n_test), gz)


__all__ = ["synthetic_digits"]  # the tests import it from here too


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    return write_idx_dir(tmp_path / "mnist")


@pytest.fixture(scope="session")
def real_mnist_dir() -> Path:
    directory = os.environ.get("MNIST_DIR")
    if not directory or not Path(directory).is_dir():
        pytest.skip("set MNIST_DIR to the folder with the real MNIST files")
    return Path(directory)


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run an entry point's main() in this process, exactly as its `if __name__ == "__main__"` does:
    cli("main", "--epochs", "0") -> Finished(returncode, stdout, stderr)."""
    monkeypatch.delenv("MNIST_DIR", raising=False)  # each test says where its data is
    monkeypatch.setenv("COLUMNS", "200")

    def run(module: str, *args: str) -> Finished:
        entry = importlib.import_module(module)
        capsys.readouterr()
        handlers = {number: signal.getsignal(number) for number in signals.STOP_SIGNALS}
        try:
            run_cli(entry.main, [str(a) for a in args])
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
        finally:  # as the process would end here: the next test starts with this one's handlers
            for number, handler in handlers.items():
                signal.signal(number, handler)
        out = capsys.readouterr()
        return Finished(code, out.out, out.err)

    return run


def run_script(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None, preexec_fn=None
) -> subprocess.CompletedProcess:
    """Run a command line in a fresh Python process from the project folder (preexec_fn: e.g. limited())."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "COLUMNS": "200", **(env or {})}
    env.pop("MNIST_DIR", None)
    return subprocess.run([sys.executable, *args], cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=preexec_fn)  # fmt: skip


def limited(resource_name: str, size: int):
    """A preexec_fn that caps one resource of the child process: limited("RLIMIT_FSIZE", 100_000)."""
    import resource

    kind = getattr(resource, resource_name)
    return lambda: resource.setrlimit(kind, (size, size))


def assert_user_error(done: Finished, message: str) -> None:
    """One clear line on stderr, exit status 2, no traceback."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def save_weights(path: Path, model: torch.nn.Module, metrics: dict | None = None) -> Path:
    """A weights-only checkpoint (not resumable), through the production writer."""
    save_checkpoint(path, model.config, {"model": model.state_dict()}, metrics)
    return path


@pytest.fixture
def tiny_model():
    from LeNet5 import LeNet5

    torch.manual_seed(0)
    return LeNet5()


@pytest.fixture
def weights(tmp_path, tiny_model) -> Path:
    """A weights-only checkpoint of an untrained LeNet5."""
    path = tmp_path / "model.pt"
    return save_weights(path, tiny_model, {"test_accuracy": 0.5})
