"""Checks on the real MNIST files and the committed checkpoint; they run when MNIST_DIR is set."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import PROJECT_DIR
from PIL import Image

from data import eval_loader, fingerprint, load_mnist
from eval import evaluate
from helper import load_model
from predict import predict_paths
from support.idx import MNIST_FILES

pytestmark = pytest.mark.real_data
COMMITTED = PROJECT_DIR / "checkpoints" / "lenet5.pt"


@pytest.fixture(scope="module")
def mnist(real_mnist_dir, tmp_path_factory):
    return load_mnist(real_mnist_dir, tmp_path_factory.mktemp("cache"), MNIST_FILES, download=False)


def test_real_files_verify(mnist):
    assert mnist.train_images.shape == (60_000, 28, 28) and mnist.test_images.shape == (10_000, 28, 28)
    assert torch.bincount(mnist.test_labels).tolist()[:3] == [980, 1135, 1032]  # the published class counts


def independent_accuracy(model, images, labels) -> float:
    """No torchvision, no loaders, no channels_last: pad and normalize by hand, one big batch."""
    x = F.pad(images.float().div(255), (2, 2, 2, 2)).sub(0.1307).div(0.3081).unsqueeze(1)
    plain = model.to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        return (plain(x).argmax(1) == labels).double().mean().item()


@pytest.mark.parametrize(
    "name, at_least, recipe",
    [("lenet5.pt", 0.991, "default"), ("lenet5-best.pt", 0.9945, "best"), ("lenet5-lecun1998.pt", 0.989, "lecun1998")],
)
def test_committed_checkpoints_agree_with_an_independent_evaluation(mnist, name, at_least, recipe):
    path = PROJECT_DIR / "checkpoints" / name
    model, checkpoint = load_model(path)
    result = evaluate(model, eval_loader(mnist.test_images, mnist.test_labels, "cpu"), "cpu")
    assert result.accuracy >= at_least and checkpoint.recipe["name"] == recipe
    assert result.accuracy == pytest.approx(independent_accuracy(model, mnist.test_images, mnist.test_labels), abs=2e-4)
    saved = json.loads(path.with_suffix(".json").read_text())
    assert result.accuracy == pytest.approx(saved["test_accuracy"], abs=2e-4)
    assert checkpoint.metrics == saved  # the .json beside the checkpoint says what the checkpoint says
    assert checkpoint.data["fingerprint"] == fingerprint(mnist)


def test_predict_reads_real_digits_written_as_scans(mnist, tmp_path):
    """Ten real test digits saved as dark-on-white, 4x upscaled PNGs: predict.py must get them right."""
    paths = []
    for i in range(10):
        scan = Image.fromarray((255 - mnist.test_images[i]).numpy(), mode="L").resize((112, 112), Image.BILINEAR)
        paths.append(tmp_path / f"{i}.png")
        scan.save(paths[-1])
    model, _ = load_model(COMMITTED)
    results = predict_paths(model, paths, topk=3)
    assert [r["prediction"] for r in results] == mnist.test_labels[:10].tolist()
