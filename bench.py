"""Side-by-side training speed: the usual per-sample PIL pipeline against this package's path.

    python bench.py --data-dir ../shared/mnist --json bench.json

Each side trains in its own fresh process (so peak memory is its own), alternating
baseline, package, baseline, package, ... so drift of the machine hits both alike.
Then it times inference on the 10,000 test images, the cold-start time of the default
`python main.py` to 99.0% test accuracy, and the fraction of the CPU's measured matmul
peak that the training loop reaches. `--quick` runs a tiny synthetic version (for tests).
"""

import os
import signal

if __name__ == "__main__":  # a Ctrl-C while torch is still loading: exit 130, no traceback (run_cli takes over)
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from data import MNIST, MNIST_MEAN, MNIST_STD, add_data_args, data_source, eval_loader, make_loaders, write_mnist
from eval import predict
from helper import CliParser, UserError, check_output_file, number, place_model, resolve_device, run_cli, write_json
from LeNet5 import LeNet5
from runs import run_main
from train import Recipe, make_optimizer, make_scheduler, train_one_epoch

CPU = torch.device("cpu")


class PILMNIST(Dataset):
    """What torchvision.datasets.MNIST does per item: a PIL image through a per-sample transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images.numpy(), labels.tolist(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i], mode="L")), self.labels[i]


def baseline_epoch(model, loader: DataLoader, optimizer, device: torch.device) -> None:
    """The loop most LeNet-5 repositories run: a .item() every step, no layout or batching tricks."""
    model.train()
    running = 0.0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        running += loss.item()


def synthetic_mnist(n_train: int, n_test: int) -> MNIST:
    g = torch.Generator().manual_seed(0)
    images = lambda n: torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)  # noqa: E731
    labels = lambda n: torch.randint(0, 10, (n,), generator=g)  # noqa: E731
    return MNIST(images(n_train), labels(n_train), images(n_test), labels(n_test))


def load_bench_data(args: argparse.Namespace) -> tuple[MNIST, str]:
    if args.quick:
        return synthetic_mnist(2048, 1000), "synthetic (--quick)"
    try:
        return data_source(args).open(), "real MNIST"
    except UserError as err:
        print(f"note: {err}\nnote: benchmarking on synthetic data of the same shape instead")
        return synthetic_mnist(60_000, 10_000), "synthetic (MNIST not found)"


def worker(args: argparse.Namespace) -> None:
    """One side of the comparison, in its own process: trains args.epochs epochs, writes JSON."""
    data, _ = load_bench_data(args)
    recipe = Recipe(batch_size=args.batch_size, epochs=args.epochs)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = LeNet5().to(device)
    if args.worker == "baseline":
        from torchvision import transforms

        transform = transforms.Compose(
            [transforms.Pad(2), transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))]
        )
        dataset = PILMNIST(data.train_images, data.train_labels, transform)
        loader = DataLoader(dataset, batch_size=recipe.batch_size, shuffle=True)
        optimizer = make_optimizer(model, recipe)
        run_epoch = lambda epoch: baseline_epoch(model, loader, optimizer, device)  # noqa: E731
        images_per_epoch = len(dataset)
    else:
        loaders = make_loaders(data, recipe.batch_size, recipe.seed, recipe.augment, device=device)
        model = place_model(model, device)
        if args.worker == "package+compile":
            model = torch.compile(model)
        optimizer = make_optimizer(model, recipe)
        scheduler = make_scheduler(optimizer, recipe, len(loaders.train))
        run_epoch = lambda epoch: train_one_epoch(  # noqa: E731
            model, loaders.train, optimizer, scheduler, device, epoch, log_interval=10**9
        )
        images_per_epoch = len(loaders.train) * recipe.batch_size
    seconds = []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        run_epoch(epoch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    result = {"seconds_per_epoch": seconds, "images_per_epoch": images_per_epoch, "peak_rss_mib": peak_mib}
    if device.type == "cuda":
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    Path(args.worker_out).write_text(json.dumps(result))


def run_worker(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--worker-out", str(out)]
        cmd += ["--epochs", str(args.epochs + (kind == "package+compile")), "--batch-size", str(args.batch_size)]
        cmd += data_flags(args) + ["--device", args.device]
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"bench worker {kind} failed:\n{done.stderr[-2000:]}")
        result = json.loads(out.read_text())
    if kind == "package+compile":  # the first epoch pays for compilation: report it apart
        first, *rest = result["seconds_per_epoch"]
        result.update(seconds_per_epoch=rest, compile_seconds=first - statistics.median(rest))
    return result


def data_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--quick"] if args.quick else []
    flags += ["--data-dir", str(args.data_dir)] if args.data_dir else []
    flags += ["--cache-dir", str(args.cache_dir)] + ["--no-download"] * args.no_download
    return flags + (["--allow-custom-data"] if args.allow_custom_data else [])


def compare_training(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    kinds = ["baseline", "package"] + (["package+compile"] if args.compile else [])
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for round_number in range(1, args.rounds + 1):
        for kind in kinds:  # interleaved: A B A B ...
            runs[kind].append(run_worker(kind, args))
            seconds = runs[kind][-1]["seconds_per_epoch"]
            print(f"round {round_number}: {kind:<16} {statistics.median(seconds):6.2f} s/epoch", flush=True)
    summary = {}
    for kind, results in runs.items():
        seconds = [s for r in results for s in r["seconds_per_epoch"]]
        images = sum(r["images_per_epoch"] * len(r["seconds_per_epoch"]) for r in results)
        summary[kind] = {
            "images_per_second": images / sum(seconds),
            "seconds_per_epoch": statistics.median(seconds),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
            "epochs_timed": len(seconds),
        }
        if "peak_gpu_mib" in results[0]:
            summary[kind]["peak_gpu_mib"] = max(r["peak_gpu_mib"] for r in results)
        if kind == "package+compile":
            summary[kind]["compile_seconds"] = statistics.median(r["compile_seconds"] for r in results)
    return summary


def inference_speed(data: MNIST, device: torch.device, batch_size: int = 500, repeats: int = 5) -> float:
    """Images/s of eval.predict over the test set at a large batch (median of repeats)."""
    torch.manual_seed(0)
    model = place_model(LeNet5(), device).eval()
    loader = eval_loader(data.test_images, data.test_labels, batch_size, device)
    predict(model, loader, device)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict(model, loader, device)  # ends with .cpu(): the device has finished
        times.append(time.perf_counter() - start)
    return len(data.test_labels) / statistics.median(times)


def time_to_accuracy(args: argparse.Namespace, target: float = 0.99) -> dict[str, Any]:
    """Cold start: launch `python main.py` (default recipe) and read when each epoch finished."""
    with tempfile.TemporaryDirectory() as tmp:
        flags = ["--device", args.device] + [f for f in data_flags(args) if f != "--quick"]
        if args.quick:  # main.py reads files: write the synthetic set as IDX
            data_dir = write_mnist(Path(tmp) / "mnist", synthetic_mnist(2048, 1000))
            flags += ["--data-dir", str(data_dir), "--cache-dir", tmp, "--epochs", "1", "--allow-custom-data"]
        try:
            run = run_main(flags, Path(tmp) / "run", target)
        except UserError as err:
            return {"error": str(err)}
    return {
        "target": target,
        "seconds_to_target": run.seconds_to_target,
        "epoch_reached": run.epoch_reached,
        "final_test_accuracy": run.final_test_accuracy,
        "epochs": run.epochs,
        "wall_seconds": run.wall_seconds,
    }


def hardware_use(package_images_per_second: float, batch_size: int) -> dict[str, float]:
    """FLOPs per training image (torch.utils.flop_counter) against a timed float32 torch.mm peak."""
    from torch.utils.flop_counter import FlopCounterMode

    model = LeNet5()
    x, y = torch.randn(batch_size, 1, 32, 32), torch.randint(0, 10, (batch_size,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    flops_per_image = counter.get_total_flops() / batch_size
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    peak = 2 * 2048**3 / best
    achieved = package_images_per_second * flops_per_image
    return {
        "flops_per_training_image": flops_per_image,
        "matmul_peak_gflops": peak / 1e9,
        "training_gflops": achieved / 1e9,
        "fraction_of_peak": achieved / peak,
        "hardware_limit_images_per_second": peak / flops_per_image,
    }


def profile_table(data: MNIST, batch_size: int, steps: int = 150, rows: int = 12) -> str:
    """torch.profiler's view of the package's training steps: where the time goes."""
    from torch.profiler import ProfilerActivity, profile

    recipe = Recipe(batch_size=batch_size)
    loaders = make_loaders(data, batch_size, 0, recipe.augment, limit=steps * batch_size)
    model = place_model(LeNet5(), CPU)
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe, len(loaders.train))
    train_one_epoch(model, loaders.train, optimizer, scheduler, CPU, 0, log_interval=10**9, progress=False)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_one_epoch(model, loaders.train, optimizer, scheduler, CPU, 1, log_interval=10**9, progress=False)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40)


def machine(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
    }


def print_report(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} threads, torch {m['torch']}, device {m['device']}; data: {r['data']}")
    print(f"{'pipeline':<18}{'train img/s':>12}{'s/epoch':>10}{'peak RSS MiB':>14}")
    for kind, row in r["training"].items():
        print(
            f"{kind:<18}{row['images_per_second']:>12,.0f}{row['seconds_per_epoch']:>10.2f}{row['peak_rss_mib']:>14,.0f}"
        )
        if "compile_seconds" in row:
            print(f"{'':<18}(compilation took {row['compile_seconds']:.1f} s more in the first epoch)")
    print(f"package / baseline: {r['speedup']:.2f}x training images/s")
    print(f"inference (test set, batch 500): {r['inference_images_per_second']:,.0f} images/s")
    t = r["time_to_accuracy"]
    if t.get("seconds_to_target") is not None:
        print(
            f"time to {100 * t['target']:.1f}% test accuracy (cold start, `python main.py`): "
            f"{t['seconds_to_target']:.1f} s (epoch {t['epoch_reached']}); final {100 * t['final_test_accuracy']:.2f}% "
            f"after {t['epochs']} epochs, {t['wall_seconds']:.1f} s in all"
        )
    else:
        print(f"time to 99.0% test accuracy: not reached ({t})")
    h = r["hardware"]
    if not h:
        return
    print(
        f"hardware: {h['flops_per_training_image'] / 1e6:.2f} MFLOP per training image; float32 matmul peak "
        f"{h['matmul_peak_gflops']:.0f} GFLOP/s (limit {h['hardware_limit_images_per_second']:,.0f} img/s); "
        f"training loop {h['training_gflops']:.1f} GFLOP/s = {100 * h['fraction_of_peak']:.0f}% of peak"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = Recipe()
    p = CliParser(__doc__)
    add_data_args(p)
    p.add_argument("--epochs", type=number(int, 1, 100), default=1, help="epochs each side trains per round")
    p.add_argument("--rounds", type=number(int, 1, 100), default=2, help="baseline/package alternations")
    p.add_argument("--batch-size", type=number(int, 1, 60_000), default=d.batch_size, help="training batch size")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="where both sides train")
    p.add_argument("--compile", action="store_true", help="also time the package path under torch.compile")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of the package's steps")
    p.add_argument("--skip-time-to-accuracy", action="store_true", help="skip the cold-start main.py run")
    p.add_argument("--quick", action="store_true", help="tiny synthetic run (checks that bench works)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    device = resolve_device(args.device)
    if args.json:
        check_output_file(args.json, "--json")
    data, kind = load_bench_data(args)
    print(f"benchmarking on {kind}: {len(data.train_labels):,} training images, batch {args.batch_size}")
    result: dict[str, Any] = {
        "machine": machine(device),
        "data": kind,
        "batch_size": args.batch_size,
        "date": time.strftime("%Y-%m-%d"),
    }
    result["training"] = compare_training(args)
    result["speedup"] = (
        result["training"]["package"]["images_per_second"] / result["training"]["baseline"]["images_per_second"]
    )
    result["inference_images_per_second"] = inference_speed(data, device)
    result["time_to_accuracy"] = {} if args.skip_time_to_accuracy else time_to_accuracy(args)
    on_cpu = device.type == "cpu"  # the FLOP-rate comparison and the profile are for the CPU
    package_rate = result["training"]["package"]["images_per_second"]
    result["hardware"] = hardware_use(package_rate, args.batch_size) if on_cpu else {}
    if args.profile and on_cpu:
        result["profile"] = profile_table(data, args.batch_size)
        print(result["profile"])
    print_report(result)
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    run_cli(main)
