"""Where the seconds of a cold start go: `python main.py FLAGS` in a fresh process, phase by phase.

    MNIST_DIR=../shared/mnist python -m scripts.cold_start --runs 3 -- --limit 10000 --epochs 1

Each run is a fresh `python -X importtime` process that imports main.py and calls its main() with
timers around its phases (main.py itself is unchanged); the process's start and exit are timed from
outside. The first run in a checkout without data/processed also builds the data cache.
The largest imports (cumulative, as -X importtime reports them) follow the phases; those made
inside a phase (sklearn, matplotlib) are part of that phase's time too.
"""

import atexit
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent  # (not support.cli's: the child times that import)
# main.py's phases: (module, function, label); the module's global is replaced by a timed wrapper
PHASES = [
    ("main", "prepare", "data: read, check, loaders"),
    ("main", "TrainState", "model build"),
    ("train", "train_one_epoch", "training"),
    ("train", "accuracy", "per-epoch evaluation"),
    ("main", "evaluate", "final evaluation (test set)"),
    ("main", "save_trained", "checkpoint and its .json"),
    ("main", "format_report", "text report"),
    ("main", "write_report", "report: metrics.json, 4 figures"),
]
TOP_IMPORTS = 6


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        child(Path(argv[1]), argv[2:])
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # as main.py ends (distributed.exit_skipping_teardown), which is not imported before the timer
    runs, flags = parse(argv)
    results = [measure(flags) for _ in range(runs)]
    print(f"`python main.py {' '.join(flags)}` (+ --out/--report-dir in a temporary folder), {runs} fresh processes")
    print(f"on {machine()}")
    print(
        f"{'seconds':<40}"
        + "".join(f"{f'run {i + 1}':>8}" for i in range(runs))
        + f"{'median':>8}  (of runs 2-{runs}: run 1 may build the data cache)" * (runs > 1)
    )
    for label in results[0]["phases"]:
        values = [r["phases"][label] for r in results]
        median = f"{statistics.median(values[1:]):8.2f}" if runs > 1 else ""  # (one run: no median column)
        print(f"{label:<40}" + "".join(f"{v:8.2f}" for v in values) + median)
    print(f"\nlargest imports (cumulative seconds, -X importtime, run {runs}):")
    for name, seconds in results[-1]["imports"][:TOP_IMPORTS]:
        print(f"  {name:<38}{seconds:8.2f}")


def machine() -> str:
    """The CPU's name and core count, Python's and torch's versions."""
    cpuinfo = Path("/proc/cpuinfo")  # Linux
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    cpu = names[0] if names else platform.processor() or "unknown CPU"
    torch_version = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True
    ).stdout.strip()
    return f"{os.cpu_count()}-core {cpu}, Python {platform.python_version()}, torch {torch_version}"


def parse(argv: list[str]) -> tuple[int, list[str]]:
    """(--runs, main.py's flags): those after `--` go to main.py unchanged."""
    from support.cli import CliParser, number  # (not at the top: the child times main.py's imports, cli's among them)

    ours, flags = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    p = CliParser(__doc__)
    p.add_argument("--runs", type=number(int, 1, 100), default=3, help="fresh processes to time, one after another")
    return p.parse_args(ours).runs, flags


def measure(flags: list[str]) -> dict:
    """One fresh process: its phases, from Popen to exit, and its largest imports."""
    with tempfile.TemporaryDirectory() as tmp:
        times = Path(tmp) / "times.json"
        outputs = ["--out", f"{tmp}/lenet5.pt", "--report-dir", f"{tmp}/reports"]
        command = [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "scripts.cold_start",
            "--child",
            str(times),
            *flags,
            *outputs,
        ]
        load, launched = os.getloadavg()[0], time.time()  # other work on the machine slows every phase
        done = subprocess.run(command, cwd=PROJECT_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ended = time.time()
        if done.returncode != 0:
            said = done.stderr.strip().splitlines()
            sys.exit(f"error: {' '.join(command)} failed: {said[-1] if said else f'exit status {done.returncode}'}")
        child_times = json.loads(times.read_text())
    phases = {"interpreter start": child_times.pop("started") - launched}
    phases.update(child_times.pop("phases"))
    phases["process exit"] = ended - child_times.pop("finished")
    phases["total (Popen to exit)"] = ended - launched
    phases["load average at launch (not seconds)"] = load
    return {"phases": phases, "imports": top_imports(done.stderr)}


def top_imports(stderr: str) -> list[tuple[str, float]]:
    """Top-level imports (the ones -X importtime does not indent), largest cumulative time first."""
    found = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cumulative, name = line.split("|")
            if name.startswith(" ") and not name.startswith("  "):
                found.append((name.strip(), int(cumulative) / 1e6))
    return sorted(found, key=lambda item: -item[1])


def child(times: Path, flags: list[str]) -> None:
    started = time.time()
    spent: dict[str, float] = {}
    import_started = time.perf_counter()
    from support.cli import run_cli

    import main as main_module
    import train

    spent["imports (main.py and what it imports)"] = time.perf_counter() - import_started
    modules = {"main": main_module, "train": train}
    for module, name, label in PHASES:
        setattr(modules[module], name, timed(getattr(modules[module], name), label, spent))
    run_started = time.perf_counter()

    def record() -> None:
        total = time.perf_counter() - run_started
        spent["other (flags, device, printing)"] = total - sum(v for k, v in spent.items() if not k.startswith("imp"))
        times.write_text(json.dumps({"started": started, "phases": spent, "finished": time.time()}))

    # run_cli ends the process itself (support/cli.end_process: os._exit, after the exit hooks), so a `finally`
    # here would never run: the times are written by an exit hook.
    atexit.register(record)
    run_cli(main_module.main, flags)


def timed(function, label: str, spent: dict[str, float]):
    def wrapper(*args, **kwargs):
        begun = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - begun

    return wrapper


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        main(sys.argv[1:])  # (the child is main.py's own run, under main.py's run_cli)
    else:
        from support.cli import run_cli

        run_cli(main, sys.argv[1:])
