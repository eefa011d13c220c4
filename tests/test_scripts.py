"""The scripts that make the README's tables: their guards (the measurements themselves are in docs/)."""

import importlib
import json
from pathlib import Path

from support.cli import run_cli

import pytest
import torch
import torch.nn.functional as F
from conftest import N_TEST, N_TRAIN, assert_user_error, run_script

from support.synthetic import synthetic_mnist


def script(name: str):
    return importlib.import_module(f"scripts.{name}")


def finished(main, *argv: str, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, list(argv))
    out = capsys.readouterr()
    return type("Finished", (), {"returncode": exit_.value.code, "stdout": out.out, "stderr": out.err})


def test_seeds_sets_the_outputs_itself(capsys, tmp_path):
    seeds = script("seeds")
    done = finished(seeds.main, "--out-dir", str(tmp_path), "--report-dir", "r", capsys=capsys)
    assert_user_error(done, "main.py's --out, --report-dir and --resume are set per seed")
    (tmp_path / "file").write_text("x")
    done = finished(seeds.main, "--out-dir", str(tmp_path / "file"), capsys=capsys)
    assert_user_error(done, "--out-dir " + str(tmp_path / "file") + " is a file, not a folder")


def test_seeds_refuses_a_summary_among_the_runs_files_and_a_seed_twice(capsys, tmp_path):
    """Checked before any run: the summary would replace seed 0's metrics; a repeated seed would run twice into
    one folder and count twice in the mean and spread."""
    seeds = script("seeds")
    runs, metrics = tmp_path / "S", tmp_path / "S" / "seed0" / "lenet5.json"
    done = finished(seeds.main, "--seeds", "0", "--out-dir", str(runs), "--out", str(metrics), capsys=capsys)
    assert_user_error(done, f"--out {metrics} is also --out-dir's lenet5.json: one would replace the other")
    done = finished(seeds.main, "--seeds", "0", "1", "0", "--out-dir", str(runs), capsys=capsys)
    assert_user_error(done, "--seeds gives 0 more than once; give each seed once")
    assert not runs.exists()  # nothing ran, no folder made


@pytest.mark.parametrize("name", ["train.log", "lenet5.json", "reports/loss.png"])
def test_seeds_refuses_a_file_of_the_users_in_a_run_folder_before_any_seed_runs(cli, idx_dir, tmp_path, name):
    """main.py refused the user's lenet5.pt in a seed's folder, but the user's train.log there was overwritten
    by the run's output: every file of every seed's folder is checked before the first seed runs."""
    from scripts.runs import LOG_MARK

    runs = tmp_path / "runs"
    mine = runs / "seed1" / name
    mine.parent.mkdir(parents=True)
    mine.write_text("my own notes\n")
    (runs / "seed0").mkdir()
    (runs / "seed0" / "train.log").write_text(f"{LOG_MARK}main.py --seed 0\n")  # its own earlier log: replaced
    data = ["--data-dir", idx_dir, "--allow-custom-data", "--no-download", "--limit", "64", "--epochs", "1"]
    done = cli("scripts.seeds", "--seeds", "0", "1", "--out-dir", runs, *data)
    assert_user_error(done, f"--out-dir's {mine.name} {mine} exists and is not ")
    assert "this program wrote; move it or choose another --out-dir" in done.stderr
    assert mine.read_text() == "my own notes\n"
    assert [p.name for p in (runs / "seed0").iterdir()] == ["train.log"]  # seed 0 did not run


def test_a_second_seeds_into_the_same_folder_is_refused_before_it_opens_a_log(cli, idx_dir, tmp_path):
    """Two `seeds` into one --out-dir: the second's main.py was refused by the checkpoint's lock, but only after
    seeds had opened seed0/train.log over the first's. The logs are held for the whole of a seeds run."""
    from scripts.runs import LOG_MARK
    from support.files import OutputPlan

    runs = tmp_path / "runs"
    (runs / "seed0").mkdir(parents=True)
    log = runs / "seed0" / "train.log"
    log.write_text(f"{LOG_MARK}main.py --seed 0\nthe first run's output\n")
    data = ["--data-dir", idx_dir, "--allow-custom-data", "--no-download", "--limit", "64", "--epochs", "1"]
    with OutputPlan() as first:  # the first seeds, still running
        first.lock(log, "--out-dir")
        done = cli("scripts.seeds", "--seeds", "0", "--out-dir", runs, *data)
    assert_user_error(done, f"is writing {log}; wait for it or choose another --out-dir")
    assert log.read_text().endswith("the first run's output\n")


def test_step_cost_times_every_part_of_a_single_process_step(capsys):
    script("step_cost").measure(global_batch=8, steps=2)
    line = capsys.readouterr().out.strip()
    assert line.startswith("rank 0: 1 process(es) x ") and ", 8 images: " in line, line
    ms = [float(part.rsplit(" ", 2)[-2]) for part in line.split(": ", 2)[2].split(", ")]
    assert len(ms) == 2 and all(m > 0 for m in ms), line  # gather+distort, step; no DDP outside torchrun


def test_step_cost_checks_its_flags(capsys, monkeypatch):
    step_cost = script("step_cost")
    assert finished(step_cost.main, "--steps", "0", capsys=capsys).returncode == 2
    monkeypatch.setenv("WORLD_SIZE", "2")
    done = finished(step_cost.main, "--batch-size", "63", capsys=capsys)
    assert done.returncode == 2 and "must split evenly over 2 processes" in done.stderr


def test_weight_average_scores_every_decay_on_the_hold_out_only(capsys, idx_dir, tmp_path):
    average = script("weight_average")
    data = ["--data-dir", str(idx_dir), "--allow-custom-data", "--no-download", "--batch-size", "16"]
    out = tmp_path / "average.json"
    average.main([*data, "--val-size", "32", "--epochs", "2", "--decays", "0.5", "0.9", "--out", str(out)])
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())["epochs"]
    assert [sorted(r) for r in rows] == [["ema 0.5", "ema 0.9", "epoch", "trained"]] * 2
    assert all(0 <= r[key] <= 1 for r in rows for key in ("trained", "ema 0.5", "ema 0.9"))
    assert f"    2 {100 * rows[1]['trained']:>7.2f}% {100 * rows[1]['ema 0.5']:>10.2f}%" in printed  # as written
    assert_user_error(finished(average.main, *data, "--val-size", "0", capsys=capsys), "would score on the test set")


def test_update_cost_times_every_part_of_a_step(capsys):
    script("update_cost").main(["--repeats", "1"])
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    assert [row[:40].strip() for row in rows] == [
        "SGD step (default recipe)", "Adam step, fused (train.py)", "Adam step, foreach (torch's default)",
        "weight average update", "loss + backward", "loss + backward, label smoothing",
        "forward + backward, batch of 64",
    ]  # fmt: skip
    assert all(float(row[40:]) > 0 for row in rows)


def test_late_distortions_finishes_each_variant_from_the_branch(capsys, idx_dir, tmp_path):
    late = script("late_distortions")
    data = ["--data-dir", str(idx_dir), "--allow-custom-data", "--no-download", "--batch-size", "16"]
    data += ["--val-size", "32", "--epochs", "3"]
    out = tmp_path / "late.json"
    late.main([*data, "--elastic-alpha", "8", "--branch", "1", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())["val_accuracy"]
    names = ["as trained"] + [f"{v}, last {n}" for n in (2, 1) for v in ("half", "affine", "clean")]
    assert list(results) == names and all(0 <= value <= 1 for value in results.values())
    assert f"{'clean, last 1':<26} {100 * results['clean, last 1']:6.2f}%" in printed
    assert_user_error(finished(late.main, *data, "--branch", "3", capsys=capsys), "--branch epochs between 1 and 2")
    assert_user_error(finished(late.main, *data, "--branch", "1", "--no-augment", capsys=capsys), "augmented recipe")


def test_late_distortions_ctrl_c_exits_130_without_a_traceback(capsys, idx_dir, monkeypatch):
    import os
    import signal

    import train

    late = script("late_distortions")
    monkeypatch.setattr(train, "check_loss", lambda *args: os.kill(os.getpid(), signal.SIGINT))  # a real Ctrl-C
    data = ["--data-dir", str(idx_dir), "--allow-custom-data", "--no-download", "--batch-size", "16"]
    done = finished(late.main, *data, "--val-size", "32", "--epochs", "3", "--branch", "1", capsys=capsys)
    assert done.returncode == 130 and done.stderr.strip() == "interrupted"


def test_cold_start_checks_its_flags_before_any_run(capsys, monkeypatch):
    cold_start = script("cold_start")
    monkeypatch.setattr(cold_start, "measure", lambda flags: pytest.fail("a run started"))
    for runs in ("0", "-1", "abc"):
        done = finished(cold_start.main, "--runs", runs, "--", "--epochs", "1", capsys=capsys)
        assert done.returncode == 2 and "error: argument --runs: must be an integer >= 1" in done.stderr
    assert cold_start.parse(["--runs", "2", "--", "--recipe", "fast"]) == (2, ["--recipe", "fast"])


def test_cold_start_times_every_phase_of_a_real_run(idx_dir):
    """The child's times are written as its process ends: main.py's run ends it with os._exit, which skipped the
    `finally` that wrote them (a traceback on every run)."""
    flags = ["--data-dir", str(idx_dir), "--allow-custom-data", "--no-download", "--batch-size", "16", "--epochs", "1"]
    done = run_script("-m", "scripts.cold_start", "--runs", "1", "--", *flags, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    rows = {line[:40].strip(): line[40:].split() for line in done.stdout.splitlines()}
    for label in ("imports (main.py and what it imports)", "training", "checkpoint and its .json", "process exit"):
        assert float(rows[label][0]) >= 0, done.stdout
    assert float(rows["training"][0]) > 0 and float(rows["total (Popen to exit)"][0]) > float(rows["training"][0])


def test_lecun1998_choices_are_each_a_valid_recipe_changing_what_they_say(cli, idx_dir, tmp_path):
    import main
    from support.recipes import recipe_flags, resolve_recipe

    lecun1998 = script("lecun1998")
    paper = resolve_recipe("lecun1998", {})
    for name, (_, flags) in lecun1998.VARIANTS.items():
        given = recipe_flags(main.parse_args(["--recipe", "lecun1998", *flags]))
        changed = {k for k, v in resolve_recipe("lecun1998", given).__dict__.items() if getattr(paper, k) != v}
        assert bool(changed) == (name != "1998 recipe"), name  # every variant changes something, the first nothing
    data = ["--data-dir", str(idx_dir), "--allow-custom-data", "--no-download", "--limit", "64", "--val-size", "16"]
    out = tmp_path / "choices.json"
    done = cli("scripts.lecun1998", "choices", *data, "--epochs", "1", "--only", "one pattern -> batches of 8",
               "--out-dir", tmp_path / "runs", "--out", out)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["variant"] == "one pattern -> batches of 8" and 0 <= row["val_error"] <= 1
    metrics = json.loads((tmp_path / "runs" / "one_pattern_batches_of_8" / "lenet5.json").read_text())
    assert metrics["recipe"]["batch_size"] == 8 and metrics["epochs"][-1]["eval_split"] == "val"


def lecun1998_run(path, seed: int = 0, passes: int = 3, **recipe) -> Path:
    """A finished lecun1998 run's metrics .json, as main.py writes it (the parts the curve reads)."""
    epochs = [{"epoch": i, "train_accuracy": 0.98 + i / 1000, "eval_accuracy": 0.985, "eval_split": "test"}
              for i in range(1, passes + 1)]  # fmt: skip
    from dataclasses import asdict

    from support.recipes import resolve_recipe

    recipe = asdict(resolve_recipe("lecun1998", {"epochs": passes, "seed": seed, **recipe}))
    path.write_text(json.dumps({"recipe": recipe, "epochs": epochs}))
    return path


def test_lecun1998_curve_needs_test_error_per_pass(cli, tmp_path):
    runs = [lecun1998_run(tmp_path / f"seed{seed}.json", seed) for seed in range(2)]
    done = cli("scripts.lecun1998", "curve", *runs, "--out", tmp_path / "c.png")
    assert done.returncode == 0 and (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert "test error 1.50 %, training error 1.70 % after pass 3" in done.stdout
    metrics = json.loads(runs[0].read_text())
    runs[0].write_text(json.dumps({**metrics, "epochs": [{**e, "eval_split": "val"} for e in metrics["epochs"]]}))
    done = cli("scripts.lecun1998", "curve", *runs, "--out", tmp_path / "c.png")
    assert_user_error(done, "its per-pass accuracy is on validation")


def edited(path, change) -> Path:
    metrics = json.loads(path.read_text())
    change(metrics)
    path.write_text(json.dumps(metrics))
    return path


def set_pass(n: int, key: str, value):
    return lambda metrics: metrics["epochs"][n - 1].__setitem__(key, value)


@pytest.mark.parametrize(
    "change, message",
    [
        (set_pass(2, "eval_accuracy", "0.98"), "its pass 2's eval_accuracy is '0.98', not an accuracy between 0 and 1"),
        (set_pass(1, "train_accuracy", 1.7), "its pass 1's train_accuracy is 1.7, not an accuracy between 0 and 1"),
        (set_pass(3, "eval_accuracy", float("nan")), "its pass 3's eval_accuracy is nan, not an accuracy between 0"),
        (set_pass(1, "train_accuracy", None), "its pass 1's train_accuracy is None, not an accuracy"),
        (lambda m: m.__setitem__("epochs", []), "it lists no passes"),
        (lambda m: m["epochs"].pop(1), "its entry 2 of epochs is pass 3: a pass is missing or out of order"),
        (lambda m: m["epochs"].reverse(), "its entry 1 of epochs is pass 3: a pass is missing or out of order"),
        (lambda m: m["epochs"].pop(), "it holds 2 passes of its recipe's 3; not a finished run"),
        (lambda m: m["epochs"].__setitem__(0, 1), "its entry 1 of epochs is not a pass's record"),
        (lambda m: m["recipe"].__setitem__("name", "default"), "a run of the 'default' recipe, not lecun1998"),
        (lambda m: m.pop("recipe"), "not a main.py metrics file (it has no recipe or no per-pass epochs)"),
    ],
    ids=[
        "string",
        "above-1",
        "nan",
        "null",
        "no-passes",
        "a-pass-missing",
        "out-of-order",
        "unfinished",
        "not-a-record",
        "default-recipe",
        "no-recipe",
    ],  # fmt: skip
)
def test_lecun1998_curve_checks_each_metrics_file_whole(cli, tmp_path, change, message):
    """One line naming the file and what is wrong in it; never a traceback, never a silently wrong curve."""
    good = lecun1998_run(tmp_path / "seed0.json", 0)
    bad = edited(lecun1998_run(tmp_path / "seed1.json", 1), change)
    done = cli("scripts.lecun1998", "curve", good, bad, "--out", tmp_path / "c.png")
    assert_user_error(done, f"error: {bad}: {message}")
    assert not (tmp_path / "c.png").exists()


def test_lecun1998_curve_is_a_mean_over_seeds_of_one_recipe(cli, tmp_path):
    """A run twice (as one path, or as a copy: the same seed) or a run of another recipe or pass count is refused,
    not averaged in as another seed nor cut to the shorter run."""
    seed0, seed1 = lecun1998_run(tmp_path / "seed0.json", 0), lecun1998_run(tmp_path / "seed1.json", 1)
    copy = lecun1998_run(tmp_path / "copy.json", 0)
    longer = lecun1998_run(tmp_path / "longer.json", 2, passes=4)
    other_mu = lecun1998_run(tmp_path / "mu.json", 3, sdlm_mu=0.02)

    def curve(*runs):
        return cli("scripts.lecun1998", "curve", *runs, "--out", tmp_path / "c.png")

    assert_user_error(curve(seed0, seed1, seed0), f"{seed0} is given twice (also as {seed0}); give each run once")
    link = tmp_path / "link.json"
    link.symlink_to(seed0)
    assert_user_error(curve(seed0, link), f"{link} is given twice (also as {seed0})")
    assert_user_error(curve(seed0, copy), f"{copy} and {seed0} are both seed 0 of the recipe, one run counted twice")
    assert_user_error(curve(seed0, longer), f"{longer} and {seed0} are runs of different recipes (epochs differ)")
    assert_user_error(curve(seed0, other_mu), "are runs of different recipes (sdlm_mu differ)")
    assert not (tmp_path / "c.png").exists()
    done = curve(seed1)
    assert done.returncode == 0 and "after pass 3" in done.stdout, done.stderr


def test_lecun1998_curve_refuses_a_figure_not_named_png(cli, tmp_path):
    """`--out c.jpg` once wrote a PNG named .jpg."""
    run = lecun1998_run(tmp_path / "seed0.json", 0)
    done = cli("scripts.lecun1998", "curve", run, "--out", tmp_path / "c.jpg")
    assert_user_error(done, f"--out {tmp_path / 'c.jpg'}: the figure is a PNG; give a name ending in .png")
    assert not (tmp_path / "c.jpg").exists()


def test_lecun1998_curve_names_a_pipe_and_never_waits_on_it(cli, tmp_path):
    """A named pipe given as a metrics file is named as one; a reader would wait for a writer that never comes."""
    import os
    import threading

    run = lecun1998_run(tmp_path / "seed0.json", 0)
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)

    def writer():  # (here one comes, so that code that reads the pipe fails this test rather than hanging it)
        try:
            with open(fifo, "w") as pipe:
                pipe.write(run.read_text().replace('"seed": 0', '"seed": 1'))
        except OSError:
            pass

    threading.Thread(target=writer, daemon=True).start()
    done = cli("scripts.lecun1998", "curve", run, fifo, "--out", tmp_path / "c.png")
    os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # lets the writer go when nothing read the pipe
    assert_user_error(done, f"curve: {fifo} is not a regular file (a pipe); give a run's lenet5.json")
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--recipe", "default"],
            "every variant is a fresh run of --recipe lecun1998 with one choice replaced: drop --recipe",
        ),
        (["--lr=0.1"], "--lr is one of the choices its variants replace"),
        (["--no-nesterov"], "--no-nesterov is one of the choices its variants replace"),
        (["--batch-size", "4"], "--batch-size is one of the choices its variants replace"),
        (["--loss", "cross_entropy"], "--loss is one of the choices its variants replace"),
    ],
    ids=["recipe", "lr", "no-nesterov", "batch-size", "loss"],
)
def test_lecun1998_choices_refuses_flags_that_redefine_its_rows(cli, idx_dir, tmp_path, flags, message):
    """`--only '1998 recipe' --recipe default` once trained the default recipe under the label "1998 recipe"."""
    data = ["--data-dir", idx_dir, "--allow-custom-data", "--no-download", "--cache-dir", tmp_path / "cache"]
    data += ["--limit", "64", "--val-size", "16"]
    done = cli("scripts.lecun1998", "choices", *data, "--epochs", "1", "--only", "1998 recipe", *flags,
               "--out-dir", tmp_path / "runs")  # fmt: skip
    assert_user_error(done, message)
    assert not (tmp_path / "runs").exists()


def test_every_script_runs_as_a_command():
    """`python -m scripts.NAME --help` works for each (the README says so): a module that only defines things
    would end at once with status 0 and no word, whatever it was given."""
    from conftest import PROJECT_DIR

    for path in sorted((PROJECT_DIR / "scripts").glob("*.py")):
        if path.name != "__init__.py":
            assert "run_cli(" in path.read_text().partition('if __name__ == "__main__":')[2], path.name


def test_peer_refuses_a_seed_beyond_what_torch_takes(cli, idx_dir, tmp_path):
    """Not torch's "Overflow when unpacking long long" traceback, after the data was read."""
    data = ["--data-dir", idx_dir, "--allow-custom-data", "--no-download", "--cache-dir", tmp_path / "cache"]
    done = cli("scripts.peer", *data, "--seed", "99999999999999999999999", "--out", tmp_path / "x.json")
    assert_user_error(done, "argument --seed: must be an integer >= 0 and <= 9223372036854775807")
    assert not (tmp_path / "x.json").exists()


def test_lecun1998_train_error_scores_the_training_images_not_the_test_images(cli, idx_dir, weights, tiny_model):
    mnist = synthetic_mnist(N_TRAIN, N_TEST)  # what idx_dir holds
    images, labels = mnist.train_images, mnist.train_labels
    x = F.pad(images.float().div(255), (2, 2, 2, 2)).sub(0.1307).div(0.3081).unsqueeze(1)
    with torch.no_grad():
        wrong = (tiny_model(x).argmax(1) != labels.long()).sum().item()  # by hand: no loader, no eval.py
    data = ["--data-dir", str(idx_dir), "--allow-custom-data", "--no-download"]
    done = cli("scripts.lecun1998", "train-error", *data, weights)
    assert done.returncode == 0, done.stderr
    assert f"training error {100 * wrong / len(labels):.2f} % ({wrong} of {len(labels)} wrong)" in done.stdout


def test_lecun1998_train_error_means_only_seeds_of_one_recipe_each_once(cli, idx_dir, tmp_path):
    """Its mean, like the curve's, counted one run twice (two spellings of a path) and averaged runs of different
    recipes, without a word; and a closed stdout lost its only product silently."""
    import os

    data = ["--data-dir", str(idx_dir), "--allow-custom-data", "--no-download"]
    runs = []
    for name, flags in (("a", ["--seed", "0"]), ("b", ["--seed", "1"]), ("c", ["--lr", "0.02"])):
        runs.append(tmp_path / name / "m.pt")
        train = ["--batch-size", "16", "--epochs", "1", "--out", runs[-1], "--report-dir", tmp_path / name / "r"]
        assert cli("main", *data, *train, *flags).returncode == 0
    twice = tmp_path / "a" / ".." / "a" / "m.pt"
    assert_user_error(cli("scripts.lecun1998", "train-error", *data, runs[0], twice), "is given twice")
    done = cli("scripts.lecun1998", "train-error", *data, runs[0], runs[2])
    assert_user_error(done, "are runs of different recipes (lr differ)")
    done = cli("scripts.lecun1998", "train-error", *data, runs[0], runs[1])
    assert done.returncode == 0 and "mean training error" in done.stdout.splitlines()[-1]
    closed = run_script("-m", "scripts.lecun1998", "train-error", *data, str(runs[0]), preexec_fn=lambda: os.close(1))
    assert closed.returncode == 2 and closed.stderr == "error: cannot write the results to stdout: it is closed\n"


USERS_JSON = '{"my": "own results"}'


@pytest.mark.parametrize(
    "script, args",
    [
        ("scripts.peer", []),
        ("scripts.lecun1998", ["choices"]),
        ("scripts.baseline", []),
        ("scripts.bench", ["--quick"]),
        ("scripts.seeds", ["--seeds", "0"]),
        ("scripts.late_distortions", ["--branch", "1"]),
        ("scripts.weight_average", []),
    ],
)
def test_every_scripts_out_refuses_a_file_of_the_users(cli, idx_dir, tmp_path, script, args):
    """`scripts.peer --out results.json` replaced the user's own results.json with its own: refused before any
    work, for every script that writes a JSON summary, the file as it was."""
    mine = tmp_path / "results.json"
    mine.write_text(USERS_JSON)
    data = ["--data-dir", idx_dir] if script == "scripts.seeds" else ["--data-dir", idx_dir, "--no-download"]
    done = cli(script, *args, *data, "--out", mine)
    assert_user_error(done, f"--out {mine} exists and is not ")
    assert "this program wrote; move it or choose another --out" in done.stderr
    assert mine.read_text() == USERS_JSON


def test_lecun1998_curve_replaces_its_own_figure_but_never_a_picture_of_the_users(cli, tmp_path):
    from PIL import Image

    runs = [lecun1998_run(tmp_path / f"seed{seed}.json", seed) for seed in range(2)]
    ours, photo = tmp_path / "curve.png", tmp_path / "holiday.png"
    for _ in range(2):
        assert cli("scripts.lecun1998", "curve", *runs, "--out", ours).returncode == 0
    Image.new("RGB", (40, 30), "orange").save(photo)
    before = photo.read_bytes()
    done = cli("scripts.lecun1998", "curve", *runs, "--out", photo)
    assert_user_error(done, f"--out {photo} exists and is not a figure this program wrote; move it")
    assert photo.read_bytes() == before


def test_paper_photos_replaces_its_own_photos_but_never_a_file_of_the_users(cli, idx_dir, tmp_path, monkeypatch):
    """`paper_photos make` into a folder holding the user's own 0000_7.jpg replaced it silently: refused before
    any photo is written, the file as it was; its own earlier photos are replaced."""
    import functools

    from PIL import Image

    from data import DataSource

    photos = script("paper_photos")  # (the tiny data passes the structure checks, not the official counts)
    monkeypatch.setattr(photos, "DataSource", functools.partial(DataSource, allow_custom=True))
    out = tmp_path / "photos"
    make = ["make", "--data-dir", idx_dir, "--out", out, "--count", "3"]
    for _ in range(2):
        assert cli("scripts.paper_photos", *make).returncode == 0
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 3
    mine = out / names[1]
    Image.new("RGB", (40, 30), "orange").save(mine)  # the user's own photo, under one of the names
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    done = cli("scripts.paper_photos", *make)
    assert_user_error(done, f"--out's {mine.name} {mine} exists and is not a photo this program wrote; move it")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # not one photo written


def test_paper_photos_score_with_stdin_closed_is_one_line():
    """`paper_photos score <&-`: sys.stdin is None, which was an AttributeError traceback."""
    import os

    done = run_script("-m", "scripts.paper_photos", "score", preexec_fn=lambda: os.close(0))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr == "error: score reads `python predict.py DIR --json` on stdin, which is closed; pipe it in\n"


def test_paper_photos_score_refuses_a_result_with_neither_a_prediction_nor_an_error(cli, monkeypatch):
    """An entry that is not predict.py's was counted as misread ("None"), a silent wrong score."""
    import io

    right = {"path": "p/0001_7.jpg", "prediction": 7}
    for odd in ({"confidence": 0.9}, {"prediction": None}, {"prediction": True}, {"prediction": 3.0},
                {"prediction": 3, "error": "x"}, {"prediction": 12}):  # fmt: skip
        monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps([right, {"path": "p/0002_3.jpg", **odd}])))
        assert_user_error(cli("scripts.paper_photos", "score"), "score reads `python predict.py DIR --json` of photos")
    entries = [right]
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(entries[:1] + [{"path": "p/0002_3.jpg", "error": "x"}])))
    done = cli("scripts.paper_photos", "score")
    assert done.returncode == 0 and done.stdout.splitlines() == [
        "1 of 2 read right (50.0%)",
        "not read right: 0002_3.jpg: x",
    ]


def test_weights_digest_tells_equal_weights_from_changed_ones_and_says_when_stdout_is_closed(cli, weights, tmp_path):
    import os
    import shutil

    copy, changed = tmp_path / "copy.pt", tmp_path / "changed.pt"
    shutil.copy(weights, copy)
    checkpoint = torch.load(weights, weights_only=True)
    checkpoint["state_dict"]["c1.bias"][0] += 1e-6
    torch.save(checkpoint, changed)
    done = cli("scripts.weights_digest", weights, copy, changed)
    assert done.returncode == 0, done.stderr
    digests = [line.split()[0] for line in done.stdout.splitlines()]
    assert len(digests) == 3 and digests[0] == digests[1] != digests[2]
    closed = run_script("-m", "scripts.weights_digest", str(weights), preexec_fn=lambda: os.close(1))
    assert closed.returncode == 2 and closed.stderr == "error: cannot write the results to stdout: it is closed\n"


def test_tensorboard_screenshot_refuses_a_tag_filter_that_is_no_regular_expression(cli, tmp_path):
    """TensorBoard showed "malformed regular expression" in the picture, and the script exited 0."""
    done = cli("scripts.tensorboard_screenshot", tmp_path, "--tag-filter", "([")
    assert_user_error(done, "argument --tag-filter: '([' is not a regular expression")
