"""The reference write-up's training pipeline, kept as the yardstick that bench.py measures against.

What most LeNet-5 repositories run: each image goes through PIL and a per-sample transform
(``Pad(2)`` -> ``ToTensor`` -> ``Normalize``) inside a ``DataLoader(shuffle=True)``; SGD at a
constant lr 0.01 with momentum 0.9, batch 64, a ``.item()`` every step. The same LeNet-5
(LeNet5.py), the same verified MNIST tensors (data.py). After each epoch it measures test
accuracy (with the same per-sample pipeline) and writes what bench.py needs as JSON.

    python -m scripts.baseline --data-dir ../shared/mnist --epochs 20 --stop-at 0.99 --out runs/baseline.json
"""

import time

from support.cli import CliParser, number, output_file, run_cli

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from data import MNIST_MEAN, MNIST_STD, add_data_args, data_source
from LeNet5 import LeNet5
from scripts.runs import PIPELINE_RESULT
from support.files import check_output_file, write_json


class PILMNIST(Dataset):
    """What torchvision.datasets.MNIST does per item: a PIL image through a per-sample transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images.numpy(), labels.tolist()
        self.transform = transforms.Compose(
            [transforms.Pad(2), transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i], mode="L")), self.labels[i]


def train_epoch(model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer) -> float:
    model.train()
    running = 0.0
    for images, labels in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        running += loss.item()  # the per-step host sync most loops have
    return running / len(loader)


@torch.no_grad()
def test_accuracy(model: torch.nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = sum((model(images).argmax(1) == labels).sum().item() for images, labels in loader)
    return correct / len(loader.dataset)


def main(argv: list[str] | None = None) -> None:
    p = CliParser(__doc__)
    add_data_args(p)
    p.add_argument("--epochs", type=number(int, 1, 1000), default=20, help="the most epochs to train")
    p.add_argument("--stop-at", type=number(float, 0, 1), default=None, help="stop once test accuracy reaches this")
    p.add_argument("--seed", type=number(int, 0, 2**63 - 1), default=0, help="seed for the weights and the shuffling")
    p.add_argument("--out", type=output_file, required=True, help="where to write the per-epoch results (JSON)")
    args = p.parse_args(argv)
    check_output_file(args.out, "--out", kind=PIPELINE_RESULT, example="results.json")
    data = data_source(args).open()
    torch.manual_seed(args.seed)
    model = LeNet5()
    train = DataLoader(PILMNIST(data.train_images, data.train_labels), batch_size=64, shuffle=True)
    test = DataLoader(PILMNIST(data.test_images, data.test_labels), batch_size=1000)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    epochs = []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        loss = train_epoch(model, train, optimizer)
        seconds = time.perf_counter() - start
        accuracy = test_accuracy(model, test)
        epochs.append({"epoch": epoch, "train_loss": loss, "seconds": seconds, "eval_split": "test",
                       "eval_accuracy": accuracy, "images_per_second": len(train.dataset) / seconds,
                       "finished_at": time.time()})  # fmt: skip
        print(f"epoch {epoch}: loss {loss:.4f}, test acc {100 * accuracy:.2f}%, {seconds:.1f}s", flush=True)
        if args.stop_at is not None and accuracy >= args.stop_at:
            break
    summary = {"test_accuracy": epochs[-1]["eval_accuracy"], "train_seconds": sum(e["seconds"] for e in epochs)}
    write_json({"pipeline": "baseline", **summary, "epochs": epochs}, args.out)


if __name__ == "__main__":
    run_cli(main)
