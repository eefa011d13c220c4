"""torchrun + DistributedDataParallel on the CPU (gloo): the maths, the launch, the failures, Ctrl-C."""

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PROJECT_DIR, assert_user_error, write_idx_dir

from data import GlobalBatches
from support.distributed import World, one_job, peer_failed

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# No augmentation: one process and two then see the very same global batches and do the same SGD maths.
# A weight average: what is evaluated and saved is the average, which every process keeps alike.
FLAGS = ["--allow-custom-data", "--no-download", "--batch-size", "32", "--epochs", "3", "--no-augment"]
FLAGS += ["--ema-decay", "0.9"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}
    env.pop("MNIST_DIR", None)
    return env


def torchrun(*args: str, env: dict[str, str] | None = None, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRUN, *args], cwd=PROJECT_DIR, env=environment(**(env or {})),
                          capture_output=True, text=True, timeout=120, **popen)  # fmt: skip


def two_machines(*per_node: list[str], env: dict[str, str] | None = None) -> list[tuple[int, str, str]]:
    """One torchrun invocation per machine (one process each) on loopback, meeting through c10d; each in a
    process group of its own, as on two machines."""
    endpoint = f"127.0.0.1:{free_port()}"
    rendezvous = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint]
    nodes = [
        subprocess.Popen(
            [*TORCHRUN, *rendezvous, "--node-rank", str(rank), *args],
            cwd=PROJECT_DIR,
            env=environment(**(env or {})),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for rank, args in enumerate(per_node)
    ]
    outputs = [node.communicate(timeout=120) for node in nodes]
    return [(node.returncode, *output) for node, output in zip(nodes, outputs)]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


# main.py with a fault at a chosen step of one rank (a moment picked by a timer made tests flaky):
# "ctrl-c": SIGINT to the rank's process group (its torchrun and its worker), as a terminal's Ctrl-C on that
# machine does; "kill": SIGKILL to the worker alone; "hang": the worker stops answering (but still ends on SIGTERM).
FAULTY_MAIN = """
import os, runpy, signal, sys, time
import train  # (PYTHONPATH: the project folder)
place, calls = train.place_batch, [0]
def counting(*args):
    calls[0] += 1
    if calls[0] == int(os.environ["FAULT_AT_STEP"]) and os.environ["RANK"] == os.environ["FAULT_RANK"]:
        kind = os.environ.get("FAULT_KIND", "ctrl-c")
        if kind in ("ctrl-c", "hup"):  # a Ctrl-C in the terminal, or the terminal closed: the whole group
            os.killpg(os.getpgrp(), signal.SIGINT if kind == "ctrl-c" else signal.SIGHUP)
        elif kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        else:  # silent, as a hung process is, but ended by torchrun's SIGTERM as one would be
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            time.sleep(600)
    return place(*args)
train.place_batch = counting
sys.argv = [os.path.join(os.environ["PROJECT_DIR"], "main.py"), *sys.argv[1:]]
if os.environ["RANK"] == os.environ["FAULT_RANK"]:  # flags of this rank's own (FAULT_ARGS), as a mistyped command
    sys.argv += os.environ.get("FAULT_ARGS", "").split()
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def faulty_main(tmp_path: Path, rank: int, step: int, kind: str = "ctrl-c", args: str = "") -> tuple[Path, dict]:
    script = tmp_path / "faulty_main.py"
    script.write_text(FAULTY_MAIN)
    env = {"PROJECT_DIR": str(PROJECT_DIR), "PYTHONPATH": str(PROJECT_DIR), "FAULT_RANK": str(rank),
           "FAULT_AT_STEP": str(step), "FAULT_KIND": kind, "FAULT_ARGS": args}  # fmt: skip
    return script, env


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """Two machines (two torchrun invocations on loopback, one process each) train; a Ctrl-C on the machine
    of rank 0 during epoch 2 stops both: rank 0 saves the state after epoch 1."""
    root = tmp_path_factory.mktemp("ddp")
    data = write_idx_dir(root / "mnist", n_train=640, n_test=50)  # 20 steps an epoch
    flags = ["--data-dir", str(data), *FLAGS, "--out", str(root / "lenet5.pt"), "--report-dir", str(root / "r")]
    script, env = faulty_main(root, rank=0, step=25)
    nodes = two_machines([str(script), *flags], [str(script), *flags], env=env)
    return root, data, flags, nodes


@pytest.mark.xdist_group("ddp")  # shares the torchrun job of `interrupted`
def test_ctrl_c_on_one_machine_stops_both_and_saves_once(interrupted, cli):
    root, _, flags, nodes = interrupted
    resume = root / "lenet5.resume.pt"
    stdout = "".join(out for _, out, _ in nodes)
    assert all(code != 0 for code, _, _ in nodes) and stdout.count("interrupted: saved the state after epoch 1") == 1
    assert f"continue with: torchrun --nproc-per-node 2 main.py {shlex.join(flags)} --resume {resume}" in stdout
    assert not any("[rank" in err for _, _, err in nodes)  # no worker was left in a collective to fail
    assert torch.load(resume, weights_only=True)["train_state"]["epoch"] == 1 and not (root / "lenet5.pt").exists()
    alone = cli("main", *flags, "--resume", resume)
    assert alone.returncode == 2 and "trained by 2 process(es); resume it with as many" in alone.stderr


@pytest.fixture(scope="module")
def resumed(interrupted):
    """`torchrun --standalone --nproc-per-node 2 main.py --resume ...`: one machine finishes what two began."""
    root, data, flags, _ = interrupted
    done = torchrun(
        "--standalone", "--nproc-per-node", "2", "main.py", *flags, "--resume", str(root / "lenet5.resume.pt")
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root, data, flags, done


@pytest.mark.xdist_group("ddp")  # shares the torchrun job of `interrupted`
def test_rank_0_alone_writes_and_reports(resumed, cli):
    root, data, _, done = resumed
    assert "1 of 3 epochs done, continuing" in done.stdout and done.stdout.count("epoch 3/3:") == 1
    assert done.stdout.count("Accuracy of the network on test images:") == 1
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("lenet5")) == ["lenet5.json", "lenet5.pt"]
    checkpoint = torch.load(root / "lenet5.pt", weights_only=True)
    assert checkpoint["train_state"]["world_size"] == 2 and len(checkpoint["train_state"]["rng"]["augment"]) == 2
    evaluated = cli("eval", "--weights", root / "lenet5.pt", "--data-dir", data, *FLAGS[:2], "--report-dir", root / "e")
    assert evaluated.returncode == 0, evaluated.stderr
    # The per-epoch test accuracy was sharded over the two processes and summed: it equals eval.py's.
    accuracy = checkpoint["metrics"]["epochs"][-1]["eval_accuracy"]
    assert f"Accuracy of the network on test images: {100 * accuracy:.2f}%" in evaluated.stdout
    assert checkpoint["metrics"]["test_accuracy"] == accuracy


@pytest.mark.xdist_group("ddp")  # shares the torchrun job of `interrupted`
def test_ddp_matches_one_process_on_the_same_global_batches(resumed, cli, tmp_path):
    """Interrupted on two machines, resumed on one with two processes: the weights of one uninterrupted
    process trained on the same global batches (the same SGD maths, summed in another order)."""
    root, _, flags, _ = resumed
    assert cli("main", *flags, "--out", tmp_path / "one.pt", "--report-dir", tmp_path).returncode == 0
    ddp, one = weights(root / "lenet5.pt"), weights(tmp_path / "one.pt")
    assert set(ddp) == set(one)  # the plain model's keys: no "module." prefix
    for key in one:
        assert torch.allclose(ddp[key], one[key], atol=1e-5, rtol=0), (key, (ddp[key] - one[key]).abs().max())


@pytest.mark.xdist_group("ddp")  # shares the torchrun job of `interrupted`
def test_a_user_error_on_one_machine_ends_the_job_with_one_line(interrupted, tmp_path):
    _, data, flags, _ = interrupted
    mine = [*flags[2:], "--out", str(tmp_path / "lenet5.pt")]  # (the last --out wins)
    nodes = two_machines(["main.py", *mine, "--data-dir", str(data)], ["main.py", *mine, "--data-dir", "/nowhere"])
    assert all(code != 0 for code, _, _ in nodes)
    ours = [line for _, _, stderr in nodes for line in stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and re.match(r"error: rank [01]: --data-dir /nowhere: no such folder", ours[0]), nodes
    assert not any("[rank" in stderr for _, _, stderr in nodes)  # no traceback from the workers
    assert not (tmp_path / "lenet5.pt").exists()


def test_a_process_whose_peer_failed_adds_nothing():
    """The failing process says why; the others, whose collectives broke, exit quietly instead of a traceback."""
    with pytest.raises(SystemExit) as exit_:
        with one_job(World(0, 0, 2)):
            raise RuntimeError("[gloo] Connection closed by peer [127.0.0.1]:37000")
    assert exit_.value.code == 1
    with pytest.raises(RuntimeError, match="a real bug"):  # anything else keeps its traceback
        with one_job(World(0, 0, 2)):
            raise RuntimeError("a real bug")


def test_global_batches_do_not_depend_on_the_number_of_processes():
    def batches(world_size: int) -> list[list[int]]:
        generators = [torch.Generator().manual_seed(3) for _ in range(world_size)]  # one per process, same seed
        shares = [GlobalBatches(100, 8, g, World(rank, rank, world_size)) for rank, g in enumerate(generators)]
        return [sum((p.tolist() for p in parts), []) for parts in zip(*shares)]  # each step: the ranks' shares

    one, two, four = batches(1), batches(2), batches(4)
    assert one == two == four and len(one) == 100 // 8
    flat = sum(one, [])
    assert len(set(flat)) == len(flat)  # no image twice within an epoch
    with pytest.raises(Exception, match="must split evenly over 3 processes"):
        GlobalBatches(100, 8, torch.Generator(), World(0, 0, 3))


def test_peer_failures_are_told_from_other_errors():
    two = World(0, 0, 2)
    gone = RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:37000")
    assert peer_failed(gone, two) and not peer_failed(gone, World())
    assert not peer_failed(RuntimeError("shape mismatch"), two) and not peer_failed(ValueError("closed by peer"), two)


def test_each_process_gets_back_its_own_generators(monkeypatch, idx_dir):
    """A DDP checkpoint holds every process's augmentation generator, in rank order; rank 1 restores rank 1's."""
    import train
    from data import load_mnist, make_loaders
    from support.idx import CUSTOM_FILES
    from support.recipes import Recipe

    monkeypatch.setattr(train, "DistributedDataParallel", lambda model, **kwargs: model)  # no process group here
    data, recipe, cpu = load_mnist(idx_dir, None, CUSTOM_FILES, download=False), Recipe(batch_size=16), "cpu"
    saved = train.TrainState({}, recipe, make_loaders(data, recipe, cpu), cpu).state_dict()  # a world of one's
    per_rank = [torch.Generator().manual_seed(seed).get_state() for seed in (10, 11)]
    saved["rng"] |= {"augment": per_rank, "torch": [torch.get_rng_state()] * 2}
    rank_1 = World(1, 1, 2)
    state = train.TrainState({}, recipe, make_loaders(data, recipe, cpu, rank_1), cpu, rank_1)
    state.load_state_dict(saved)
    assert torch.equal(state.generators.augment.get_state(), per_rank[1])
    assert not torch.equal(state.generators.shuffle.get_state(), per_rank[1])  # the shared one is the shared one


@pytest.mark.parametrize(
    "kind, said",
    [("kill", "error: rank 1 ended (killed, or failed on its own machine) during epoch 2"),
     ("hang", "error: rank 1 stopped answering (nothing from it within 15 s) during epoch 2")],
)  # fmt: skip
def test_a_dead_or_silent_peer_keeps_the_finished_epochs(tmp_path, kind, said):
    """Rank 1 is killed, or hangs, in epoch 2: rank 0 saves epoch 1 from what it holds (no collective
    needed), says in one line which rank failed and how to continue, and no worker prints a traceback."""
    data = write_idx_dir(tmp_path / "mnist", n_train=640, n_test=50)  # 20 steps an epoch
    out = tmp_path / "lenet5.pt"
    flags = ["--data-dir", str(data), *FLAGS, "--out", str(out), "--report-dir", str(tmp_path / "r")]
    script, env = faulty_main(tmp_path, rank=1, step=25, kind=kind)
    # A hung peer is found by the collectives' timeout: 15 s, far above what a collective takes even with the
    # suite's other processes on the same two cores (a killed one is found at once, by its closed connection).
    done = torchrun("--standalone", "--nproc-per-node", "2", str(script), *flags,
                    env={**env, "LENET5_COLLECTIVE_TIMEOUT_S": "15"})  # fmt: skip
    ours = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and ours[0].startswith(said), done.stderr[-3000:]
    resume = out.with_name("lenet5.resume.pt")
    assert f"saved the state after epoch 1 to {resume}; continue with: torchrun --nproc-per-node 2 main.py" in ours[0]
    assert torch.load(resume, weights_only=True)["train_state"]["epoch"] == 1 and not out.exists()
    for project_file in ("main.py", "train.py", "support/distributed.py", "extras/resume.py"):  # no traceback of ours
        assert f'{PROJECT_DIR / project_file}", line' not in done.stderr, done.stderr[-3000:]
    assert "KeyboardInterrupt" not in done.stderr


def test_rank_variables_without_torchrun_are_one_line(cli, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    done = cli("main")
    assert_user_error(done, "RANK and WORLD_SIZE are set, but this process was not started by torchrun")


def test_ranks_started_unlike_each_other_stop_with_one_line(tmp_path):
    """Rank 1 started with another --lr and fewer epochs: one line names the rank and the differences, before any
    training (a rank with fewer epochs was reported as "stopped answering" at the end)."""
    args, said = "--lr 0.02 --epochs 2", "recipe.epochs 2 (rank 0: 3); recipe.lr 0.02 (rank 0: 0.01)"
    data = write_idx_dir(tmp_path / "mnist")
    out = tmp_path / "lenet5.pt"
    flags = ["--data-dir", str(data), *FLAGS, "--out", str(out), "--report-dir", str(tmp_path / "r")]
    script, env = faulty_main(tmp_path, rank=1, step=10**9, args=args)
    done = torchrun("--standalone", "--nproc-per-node", "2", str(script), *flags, env=env)
    ours = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert ours == [f"error: rank 1 was started unlike rank 0 ({said}): start every process with the same flags, "
                    "data and code"], done.stderr[-3000:]  # fmt: skip
    assert "epoch 1/" not in done.stdout and not out.exists()


def test_closing_the_terminal_of_a_torchrun_job_saves_the_finished_epochs(tmp_path):
    """SIGHUP to torchrun and its workers (the terminal closed) during epoch 2: they stop together, rank 0 saves
    epoch 1 once and says how to continue."""
    data = write_idx_dir(tmp_path / "mnist", n_train=640, n_test=50)  # 20 steps an epoch
    out = tmp_path / "lenet5.pt"
    flags = ["--data-dir", str(data), *FLAGS, "--out", str(out), "--report-dir", str(tmp_path / "r")]
    script, env = faulty_main(tmp_path, rank=0, step=25, kind="hup")
    done = torchrun("--standalone", "--nproc-per-node", "2", str(script), *flags, env=env, start_new_session=True)
    resume = out.with_name("lenet5.resume.pt")
    assert done.returncode != 0 and done.stdout.count(f"interrupted: saved the state after epoch 1 to {resume}") == 1
    assert torch.load(resume, weights_only=True)["train_state"]["epoch"] == 1 and not out.exists()
    assert not any(f'{PROJECT_DIR / name}", line' in done.stderr for name in ("main.py", "train.py")), done.stderr


def closed(fd: int):
    """A preexec_fn: the child starts with `fd` closed (`>&-` for 1, `2>&-` for 2): Python has no sys.stdout then."""
    return lambda: os.close(fd)


def test_a_run_with_stdout_closed_ends_well(tmp_path):
    """`python main.py ... >&-`: the run writes its files and ends with 0 (exit_skipping_teardown flushed None)."""
    flags = ["--data-dir", write_idx_dir(tmp_path / "mnist"), "--cache-dir", tmp_path / "cache", *FLAGS[:4]]
    flags += ["--epochs", "1", "--out", tmp_path / "m.pt", "--report-dir", tmp_path / "report"]
    done = subprocess.run([sys.executable, "main.py", *map(str, flags)], cwd=PROJECT_DIR, env=environment(),
                          stderr=subprocess.PIPE, text=True, timeout=300, preexec_fn=closed(1))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and (tmp_path / "m.pt").is_file()


def test_a_bad_flag_with_stderr_closed_still_exits_2():
    """`python main.py --epochs x 2>&-`: the line cannot be printed, the status still says a user error."""
    done = subprocess.run([sys.executable, "main.py", "--epochs", "x"], cwd=PROJECT_DIR, env=environment(),
                          stdout=subprocess.DEVNULL, timeout=300, preexec_fn=closed(2))  # fmt: skip
    assert done.returncode == 2


def test_the_1998_recipe_under_torchrun_matches_one_process(tmp_path, cli):
    """SDLM under DDP: every process estimates the same curvature (same weights, same 500 patterns) and steps
    on the gradient averaged over the global batch, as one process does."""
    data = write_idx_dir(tmp_path / "mnist", n_train=128, n_test=20)
    flags = ["--recipe", "lecun1998", "--data-dir", str(data), *FLAGS[:2], "--epochs", "2", "--batch-size", "16"]
    two = tmp_path / "two" / "lenet5.pt"
    done = torchrun("--standalone", "--nproc-per-node", "2", "main.py", *flags, "--out", str(two))
    assert done.returncode == 0, done.stderr[-3000:]
    assert cli("main", *flags, "--out", tmp_path / "one" / "lenet5.pt").returncode == 0
    ddp, one = weights(two), weights(tmp_path / "one" / "lenet5.pt")
    assert set(ddp) == set(one) and "output.centres" in one
    for key in one:
        assert torch.allclose(ddp[key], one[key], atol=1e-5, rtol=0), (key, (ddp[key] - one[key]).abs().max())
