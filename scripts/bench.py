"""Speed as a user feels it: the time from typing the command to a model with 99.0 % test accuracy.

    python -m scripts.bench --data-dir ../shared/mnist --sides peer fast fast-compiled default --rounds 3 \
        --best-rounds 0 --out docs/outputs/bench.json

Five sides, each launched as a fresh process and timed from launch (cold start: imports and
data loading count) to the end of the first epoch whose test accuracy reaches --target:
- baseline: scripts/baseline.py, the reference write-up's pipeline (per-sample PIL transforms,
  SGD lr 0.01 momentum 0.9 constant, batch 64, a .item() per step), capped at 20 epochs;
- peer: scripts/peer.py, the fastest public MNIST training we know of (tuomaso/train_mnist_fast,
  a 215k-parameter ReLU network, one epoch), timed to the end of its run;
- fast: `python main.py --recipe fast`;
- fast-compiled: the same with --compile, its torch.compile cache in a folder of the benchmark's own: an
  untimed warm-up run fills it first (its cold time is reported), then the timed runs reuse it;
- default: `python main.py`.
They alternate (the baseline, then the others in an order that turns each round) so that drift of
the machine hits all alike; every side runs with the same threads. A secondary line times
`python main.py --recipe best` the same way to --best-target (99.5 %), --best-rounds times, after
the other sides (minutes per run, so it is not alternated). Other secondary numbers:
training images/s of the baseline and of the package (read off the same runs), inference images/s,
and FLOPs per training image against the CPU's measured matmul peak. `--quick` is a seconds-long
synthetic run that checks the machinery (for tests), not a measurement. The measured results are in
the README and docs/outputs/bench_output.txt.
"""

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from support.cli import (
    CliParser,
    add_device_flag,
    add_json_flag,
    number,
    output_file,
    print_results,
    results_arrived,
    run_cli,
)

import torch
import torch.nn.functional as F

from data import MNIST, add_data_args, data_source, eval_loader, make_loaders, write_mnist
from eval import predict
from LeNet5 import LeNet5
from scripts.runs import Run, run_main, run_timed
from support.devices import choose_device, place_model
from support.files import check_output_file, json_kind, json_text, write_json
from support.recipes import Recipe
from support.synthetic import synthetic_mnist
from train import TrainState, train_one_epoch

RESULT = json_kind("a benchmark result", {"machine", "sides"})  # --out: replaces only its own kind

SIDES = ("baseline", "peer", "fast", "fast-compiled", "default")
COMPILED = "-compiled"  # a side's suffix: its recipe, run with main.py --compile
QUICK_SIDES = ("baseline", "peer", "fast")  # --quick checks the machinery; default runs the same code as fast
BASELINE_EPOCHS = 20
BEST_TARGET = 0.995


def launch(side: str, data_flags: list[str], out_dir: Path, target: float, quick: bool, seed: int = 0) -> Run:
    """One cold-start run of one side, in a fresh process, with the given seed."""
    data_flags = [*data_flags, "--seed", str(seed)]
    if side == "baseline":
        epochs = "1" if quick else str(BASELINE_EPOCHS)
        command = ["-m", "scripts.baseline", *data_flags, "--epochs", epochs]
        command += ["--stop-at", str(target), "--out", str(out_dir / "baseline.json")]
        return run_timed(command, out_dir / "baseline.json", out_dir / "train.log", target)
    if side == "peer":
        command = ["-m", "scripts.peer", *data_flags, "--out", str(out_dir / "peer.json")]
        return run_timed(command, out_dir / "peer.json", out_dir / "train.log", target)
    recipe = side.removesuffix(COMPILED)
    flags = [*data_flags, "--recipe", recipe] + (["--compile"] if recipe != side else [])
    return run_main(flags + (["--epochs", "1"] if quick else []), out_dir, target)


@contextlib.contextmanager
def compile_cache(folder: Path) -> Iterator[None]:
    """torch.compile's cache (Inductor's) in `folder` for the runs launched meanwhile: empty at first, whatever
    earlier runs on this machine left in torch's own cache."""
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            del os.environ["TORCHINDUCTOR_CACHE_DIR"]
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = before


def round_order(sides: list[str], round_number: int) -> list[str]:
    """The baseline first (when it runs), then the other sides, turned by one place every round: the side that
    starts right after the baseline's minutes of full load takes turns, so that none always inherits it."""
    first, rest = (sides[:1], sides[1:]) if sides[0] == "baseline" else ([], sides)
    turn = (round_number - 1) % len(rest)
    return [*first, *rest[turn:], *rest[:turn]]


def time_to_accuracy(data_flags: list[str], device_flags: list[str], rounds: int, target: float, quick: bool,
                     sides: tuple[str, ...] = SIDES):  # fmt: skip
    """rounds x the sides (in SIDES' order, the baseline first), alternating; returns every run of every side, and
    under "SIDE (cold)" the warm-up run of each compiled side (its compilation into an empty cache)."""
    chosen = [side for side in (QUICK_SIDES if quick else SIDES) if side in sides]
    runs: dict[str, list[Run]] = {side: [] for side in chosen}
    with tempfile.TemporaryDirectory() as tmp, compile_cache(Path(tmp) / "torch-compile-cache"):
        for side in (side for side in chosen if side.endswith(COMPILED)):
            run = launch(side, data_flags + device_flags, Path(tmp) / f"{side}-warmup", target, quick)
            runs[f"{side} (cold)"] = [run]  # (reported, not alternated: the first run alone is cold)
            say(f"warm-up: {side}", run, target)
        for round_number in range(1, rounds + 1):
            for side in round_order(chosen, round_number):
                flags = data_flags + (device_flags if side != "baseline" else [])
                # round r runs seed r - 1 on every side: the peer's own result is a mean over seeds
                run = launch(side, flags, Path(tmp) / f"{side}{round_number}", target, quick, round_number - 1)
                runs[side].append(run)
                say(f"round {round_number}: {side:<13}", run, target)
    return runs


def say(label: str, run: Run, target: float) -> None:
    """One run's progress line, as it finishes."""
    reached = f"{run.seconds_to_target:.1f} s" if run.seconds_to_target else "not reached"
    print(
        f"{label} {100 * target:.1f}% {reached} (epoch {run.epoch_reached}), "
        f"final {100 * run.final_test_accuracy:.2f}%, {run.images_per_second:,.0f} img/s",
        flush=True,
    )


def time_best(data_flags: list[str], device_flags: list[str], rounds: int, target: float, quick: bool) -> list[Run]:
    """The best recipe's cold-start time to its own, higher target: the secondary line."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_number in range(1, rounds + 1):
            flags = [*data_flags, *device_flags, "--recipe", "best"] + (["--epochs", "1"] if quick else [])
            run = run_main(flags, Path(tmp) / f"best{round_number}", target)
            runs.append(run)
            say(f"best {round_number}:", run, target)
    return runs


def summarize_runs(runs: list[Run]) -> dict[str, Any]:
    """The medians of one side's runs (the time to the target only if every run reached it), and the runs."""
    reached = [r.seconds_to_target for r in runs if r.seconds_to_target is not None]
    return {
        "seconds_to_target": statistics.median(reached) if len(reached) == len(runs) else None,
        "epoch_reached": [r.epoch_reached for r in runs],
        "final_test_accuracy": [r.final_test_accuracy for r in runs],
        "best_test_accuracy": max(r.best_eval_accuracy for r in runs),
        "images_per_second": statistics.median(r.images_per_second for r in runs),
        "wall_seconds": statistics.median(r.wall_seconds for r in runs),
        "runs": [asdict(r) for r in runs],
    }


def summarize_sides(runs: dict[str, list[Run]]) -> dict[str, dict[str, Any]]:
    """Medians per side, and how many times sooner than the baseline each side reached the target."""
    summary = {side: summarize_runs(side_runs) for side, side_runs in runs.items()}
    base = summary["baseline"]["seconds_to_target"] if "baseline" in summary else None
    for side in set(summary) - {"baseline"} if "baseline" in summary else ():
        mine = summary[side]["seconds_to_target"]
        # A baseline that never reached the target gives a lower bound: its whole run was not enough.
        bound = base if base is not None else summary["baseline"]["wall_seconds"]
        summary[side]["times_sooner_than_baseline"] = bound / mine if mine else None
        summary[side]["times_sooner_is_lower_bound"] = base is None
    # The peer is timed from launch to the end of its one epoch, as its notebook times itself, whatever it reached
    # (its rows show the accuracies); the package's sides to the end of their first epoch at the target.
    peer = summary["peer"]["wall_seconds"] if "peer" in summary else None
    for side in set(summary) - {"baseline", "peer"}:
        mine = summary[side]["seconds_to_target"]
        summary[side]["times_sooner_than_peer"] = peer / mine if peer and mine else None
    return summary


def inference_speed(data: MNIST, device: torch.device, batch_size: int = 500, repeats: int = 5) -> float:
    """Images/s of eval.predict over the test set at a large batch (median of repeats)."""
    torch.manual_seed(0)
    model = place_model(LeNet5(), device).eval()
    loader = eval_loader(data.test_images, data.test_labels, device, batch_size)
    predict(model, loader, device)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict(model, loader, device)  # ends with .cpu(): the device has finished
        times.append(time.perf_counter() - start)
    return len(data.test_labels) / statistics.median(times)


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


def profile_table(data: MNIST, steps: int = 150, rows: int = 12) -> str:
    """torch.profiler's view of the default recipe's training steps: where the time goes."""
    from torch.profiler import ProfilerActivity, profile

    recipe = replace(Recipe(), limit=steps * Recipe().batch_size)
    loaders = make_loaders(data, recipe)
    state = TrainState(LeNet5().config, recipe, loaders, torch.device("cpu"))
    train_one_epoch(state, loaders.train, log_interval=10**9)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_one_epoch(state, loaders.train, log_interval=10**9)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40)


def machine(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
    }


def print_report(r: dict[str, Any]) -> None:
    m, t = r["machine"], r["target"]
    print(f"\nmachine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}, device {m['device']}; data: {r['data']}")
    header = f"{'side':<21}{f's to {100 * t:.1f}%':>12}{'vs baseline':>12}{'vs peer':>9}{'epochs':>10}"
    print(header + f"{'final test acc':>22}{'train img/s':>13}")
    for side, row in r["sides"].items():
        seconds = f"{row['seconds_to_target']:.1f}" if row["seconds_to_target"] else "not reached"
        ratio = row.get("times_sooner_than_baseline")
        missing = "-" if side == "baseline" or "baseline" not in r["sides"] else "?"
        ratio = missing if ratio is None else f"{ratio:.1f}x"
        ratio = (">=" if row.get("times_sooner_is_lower_bound") else "") + ratio
        peer = row.get("times_sooner_than_peer")
        peer = f"{peer:.2f}x" if peer else "-"
        finals = ", ".join(f"{100 * a:.2f}" for a in row["final_test_accuracy"])
        epochs = ", ".join(str(e) for e in row["epoch_reached"])
        print(f"{side:<21}{seconds:>12}{ratio:>12}{peer:>9}{epochs:>10}{finals:>22}{row['images_per_second']:>13,.0f}")
    for side in ("fast", "fast-compiled"):
        if "peer" not in r["sides"] or side not in r["sides"]:
            continue
        ratio = r["sides"][side].get("times_sooner_than_peer")
        peer = r["sides"]["peer"]
        finals = ", ".join(f"{100 * a:.2f}" for a in peer["final_test_accuracy"])
        said = f"reached {100 * t:.1f}% {ratio:.2f}x as soon as" if ratio else f"missed {100 * t:.1f}% against"
        print(f"{side} {said} the peer (tuomaso/train_mnist_fast) ended its run: {peer['wall_seconds']:.1f} s from "
              f"launch to exit (median), at {finals}% test accuracy")  # fmt: skip
    best = r.get("best")
    if best:
        seconds = f"{best['seconds_to_target']:.1f} s" if best["seconds_to_target"] else "not reached"
        finals = ", ".join(f"{100 * a:.2f}" for a in best["final_test_accuracy"])
        epochs = ", ".join(str(e) for e in best["epoch_reached"])
        print(f"best recipe to {100 * best['target']:.1f}%: {seconds} (epoch {epochs}; final test acc {finals}; "
              f"whole run {best['wall_seconds']:.0f} s)")  # fmt: skip
    if r["throughput_ratio"]:
        print(f"package / baseline training images/s: {r['throughput_ratio']:.2f}x")
    print(f"inference (test set, batch 500): {r['inference_images_per_second']:,.0f} images/s")
    h = r["hardware"]
    if h:
        print(
            f"hardware: {h['flops_per_training_image'] / 1e6:.2f} MFLOP per training image; float32 matmul peak "
            f"{h['matmul_peak_gflops']:.0f} GFLOP/s (limit {h['hardware_limit_images_per_second']:,.0f} img/s); "
            f"default recipe {h['training_gflops']:.1f} GFLOP/s = {100 * h['fraction_of_peak']:.0f}% of peak"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CliParser(__doc__)
    add_data_args(p)
    p.add_argument("--rounds", type=number(int, 1, 100), default=2, help="how many times each side runs, alternating")
    p.add_argument("--target", type=number(float, 0, 1, low_open=True), default=0.99, help="test accuracy to reach")
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES), help="which sides run (default: all)")
    p.add_argument("--best-rounds", type=number(int, 0, 100), default=1, help="runs of the best recipe (0: none)")
    best = "test accuracy the best recipe's runs are timed to"
    p.add_argument("--best-target", type=number(float, 0, 1, low_open=True), default=BEST_TARGET, help=best)
    add_device_flag(p)  # (the package's sides; the baseline is the write-up's CPU pipeline)
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of the training steps")
    p.add_argument("--quick", action="store_true", help="tiny synthetic run (checks that bench works)")
    p.add_argument("--out", type=output_file, help="also write the results here as JSON")
    add_json_flag(p)
    return p.parse_args(argv)


def open_data(args: argparse.Namespace, tmp: Path) -> tuple[MNIST, str, list[str]]:
    """(data, what it is, the data flags that make the sides read the same)."""
    if args.quick:
        data, kind = synthetic_mnist(2048, 1000), "synthetic (--quick)"
        directory = write_mnist(tmp / "mnist", data)
        return data, kind, ["--data-dir", str(directory), "--allow-custom-data", "--no-download"]
    source = data_source(args)
    return source.open(), "MNIST" if not args.allow_custom_data else "your IDX files", source.flags()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.out:
        check_output_file(args.out, "--out", kind=RESULT, example="results.json")
    device = choose_device(args.device)
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):  # with --json, stdout is the JSON
        result = measure(args, device)
        print_report(result)
        if args.out:
            write_json(result, args.out)
            print(f"wrote {args.out}")
    if args.json:
        print_results(json_text(result))
    elif not args.out:  # the printed report is the results' only copy
        results_arrived()


def measure(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        data, kind, data_flags = open_data(args, Path(tmp))
        print(f"benchmarking on {kind}: {len(data.train_labels):,} training images")
        device_flags = ["--device", args.device]
        runs = time_to_accuracy(data_flags, device_flags, args.rounds, args.target, args.quick, tuple(args.sides))
        best = time_best(data_flags, ["--device", args.device], args.best_rounds, args.best_target, args.quick)
    result: dict[str, Any] = {"machine": machine(device), "data": kind, "target": args.target}
    result["date"] = time.strftime("%Y-%m-%d")
    result["sides"] = summarize_sides(runs)
    result["best"] = {"target": args.best_target, **summarize_runs(best)} if best else None
    package = next((side for side in ("default", "fast") if side in result["sides"]), None)
    package_rate = result["sides"][package]["images_per_second"] if package else None
    baseline = result["sides"].get("baseline")
    result["throughput_ratio"] = package_rate / baseline["images_per_second"] if baseline else None
    result["inference_images_per_second"] = inference_speed(data, device)
    measured = package_rate and device.type == "cpu"
    result["hardware"] = hardware_use(package_rate, Recipe().batch_size) if measured else {}
    if args.profile and device.type == "cpu":
        result["profile"] = profile_table(data)
        print(result["profile"])
    elif args.profile:
        print(f"note: --profile profiles the CPU loop; on {device.type} use torch.profiler with the CUDA activity")
    return result


if __name__ == "__main__":
    run_cli(main)
