"""The fastest public MNIST training we know of, as bench.py's peer side: tuomaso/train_mnist_fast, notebook
8_Final_00s76.ipynb (https://github.com/tuomaso/train_mnist_fast, MIT licence), written from that file.

Its network, optimizer, schedule and loop, unchanged: two convolutions (24@5x5, 32@3x3), each followed by 2x2
max pooling and ReLU, then 800 -> 256 -> 10 with ReLU and log-softmax (215,194 parameters); Adam lr 0.01 with
betas (0.7, 0.9); OneCycleLR to 0.01 without momentum cycling; batches of 256 in the stored order; one epoch;
the negative log-likelihood loss. Its data step is the notebook's data_saver.py: the 28x28 images scaled to
[0, 1] and normalized with mean 0.1307 and std 0.3081, shuffled once and held in memory. Here the images come
from the same verified MNIST (data.py) as bench.py's other sides, and that step is timed with the run.

    python -m scripts.peer --data-dir ../shared/mnist --out runs/peer.json
"""

import time

from support.cli import CliParser, add_device_flag, number, output_file, run_cli

import torch
import torch.nn.functional as F
from torch import nn

from data import MNIST_MEAN, MNIST_STD, add_data_args, data_source
from scripts.runs import PIPELINE_RESULT
from support.devices import choose_device
from support.files import check_output_file, write_json


class Net(nn.Module):
    """The notebook's Net."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 24, 5, 1)
        self.conv2 = nn.Conv2d(24, 32, 3, 1)
        self.fc1 = nn.Linear(800, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return F.log_softmax(self.fc2(x), dim=1)


def prepared(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None):
    """data_saver.py's tensors: N x 1 x 28 x 28 floats, normalized (shuffled once when a generator is given)."""
    x = ((images.float() / 255 - MNIST_MEAN) / MNIST_STD).unsqueeze(1)
    if generator is None:
        return x, labels.long()
    order = torch.randperm(len(labels), generator=generator)
    return x[order], labels.long()[order]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 1, batch_size: int = 256) -> None:
    """The notebook's train(): consecutive slices of the stored order, one OneCycleLR step per batch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.7, 0.9))
    batches = (len(x) - 1) // batch_size + 1
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=0.01, total_steps=batches * epochs, cycle_momentum=False
    )
    model.train()
    for step in range(batches * epochs):
        i = step % batches
        optimizer.zero_grad()
        F.nll_loss(model(x[batch_size * i : batch_size * (i + 1)]), y[batch_size * i : batch_size * (i + 1)]).backward()
        optimizer.step()
        scheduler.step()


@torch.no_grad()
def test(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> float:
    model.eval()
    return sum((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
               for i in range(0, len(x), batch_size)) / len(y)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = CliParser(__doc__)
    add_data_args(p)
    p.add_argument("--seed", type=number(int, 0, 2**63 - 1), default=0, help="seed for the weights and the one shuffle")
    p.add_argument("--epochs", type=number(int, 1, 100), default=1, help="the notebook trains one")
    p.add_argument(
        "--out", type=output_file, required=True, help="where to write the result (JSON, as bench.py reads it)"
    )
    add_device_flag(p)
    args = p.parse_args(argv)
    check_output_file(args.out, "--out", kind=PIPELINE_RESULT, example="peer.json")
    device = choose_device(args.device)
    mnist = data_source(args).open()
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    x, y = prepared(mnist.train_images, mnist.train_labels, torch.Generator().manual_seed(args.seed))
    test_x, test_y = prepared(mnist.test_images, mnist.test_labels)
    x, y, test_x, test_y = (t.to(device) for t in (x, y, test_x, test_y))  # the notebook holds all on the device
    model = Net().to(device)
    train(model, x, y, args.epochs)
    seconds = time.perf_counter() - start
    accuracy = test(model, test_x, test_y)
    epoch = {"epoch": args.epochs, "seconds": seconds, "eval_split": "test", "eval_accuracy": accuracy,
             "images_per_second": args.epochs * len(y) / seconds, "finished_at": time.time()}  # fmt: skip
    print(f"peer (tuomaso/train_mnist_fast): test acc {100 * accuracy:.2f}%, {seconds:.1f}s training", flush=True)
    write_json({"pipeline": "peer", "test_accuracy": accuracy, "train_seconds": seconds, "epochs": [epoch]}, args.out)


if __name__ == "__main__":
    run_cli(main)
