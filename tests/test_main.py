"""The entry points as a user runs them: end to end on tiny synthetic data, and every user error."""

import json

import pytest
import torch
from conftest import N_TEST, run_script, write_idx_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny end-to-end `python main.py` run, shared by the tests that inspect its outputs."""
    root = tmp_path_factory.mktemp("e2e")
    data = write_idx_dir(root / "mnist", gz=False)
    out, reports = root / "ckpt" / "lenet5.pt", root / "reports"
    done = run_script(
        "main.py", "--data-dir", str(data), "--allow-custom-data", "--no-download", "--epochs", "2",
        "--batch-size", "16", "--log-interval", "2", "--out", str(out), "--report-dir", str(reports),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return root, data, out, reports, done.stdout


def test_main_writes_checkpoint_report_and_plots(trained):
    root, _, out, reports, stdout = trained
    assert "60,806 trainable parameters" in stdout
    assert "epoch 2/2: train loss" in stdout
    assert "[1,     2] loss:" in stdout  # the running loss at log intervals
    assert "Accuracy of the network on test images:" in stdout and "Accuracy of 9:" in stdout
    for name in ("metrics.json", "confusion_matrix.png", "misclassified.png", "loss.png", "accuracy.png"):
        assert (reports / name).stat().st_size > 0 and str(reports / name) in stdout
    metrics = json.loads(out.with_suffix(".json").read_text())
    assert len(metrics["epochs"]) == 2 and 0 <= metrics["test_accuracy"] <= 1
    checkpoint = torch.load(out, weights_only=True)
    assert {"state_dict", "config", "epoch", "metrics", "normalization", "torch_version"} <= set(checkpoint)
    assert checkpoint["epoch"] == 2 and checkpoint["metrics"]["test_accuracy"] == metrics["test_accuracy"]


def test_eval_reproduces_main_accuracy(trained):
    root, data, out, _, _ = trained
    reports = root / "eval-reports"
    done = run_script(
        "eval.py", "--weights", str(out), "--data-dir", str(data), "--allow-custom-data", "--no-download",
        "--out", str(reports),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = json.loads(out.with_suffix(".json").read_text())["test_accuracy"]
    assert f"Accuracy of the network on test images: {100 * expected:.2f}%" in done.stdout
    assert json.loads((reports / "metrics.json").read_text())["total"] == N_TEST


def test_visualize_writes_filters_and_feature_maps(trained):
    root, data, out, _, _ = trained
    done = run_script(
        "visualize.py", "--weights", str(out), "--data-dir", str(data), "--allow-custom-data", "--no-download",
        "--index", "3", "--out", str(root / "vis"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (root / "vis" / "filters.png").stat().st_size > 0 and (root / "vis" / "feature_maps.png").stat().st_size > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["main.py", "--data-dir", "{tmp}/missing", "--cache-dir", "{tmp}/cache", "--no-download"],
            "MNIST not found in",
        ),
        (
            ["main.py", "--data-dir", "{tmp}/mnist", "--cache-dir", "{tmp}/cache", "--no-download"],
            "holds 96 images, expected 60,000",
        ),
        (["main.py", "--epochs", "0"], "--epochs must be at least 1"),
        (["main.py", "--device", "tpu"], "invalid choice: 'tpu'"),
        (["main.py", "--resume", "{tmp}/none.pt"], "no such checkpoint"),
        (["main.py", "--out", "{tmp}/garbage.pt/lenet5.pt"], "cannot create"),  # checked before training
        (["eval.py", "--weights", "{tmp}/garbage.pt"], "not a readable checkpoint"),
        (["eval.py", "--weights", "{tmp}/none.pt"], "no such checkpoint"),
    ],
)
def test_user_errors_exit_2_with_one_line(tmp_path, args, message):
    write_idx_dir(tmp_path / "mnist")
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 50)
    done = run_script(*[a.format(tmp=tmp_path) for a in args])
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 3  # argparse adds its usage line


def test_cuda_request_without_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    done = run_script("main.py", "--device", "cuda")
    assert done.returncode == 2 and done.stderr.strip() == (
        "error: --device cuda is not available on this machine; use --device cpu or auto"
    )


def test_help_shows_defaults():
    done = run_script("main.py", "--help")
    assert done.returncode == 0
    assert "(default: 10)" in done.stdout and "(default: 0.01)" in done.stdout


def test_ctrl_c_saves_a_checkpoint_that_resumes_to_the_same_weights(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from conftest import PROJECT_DIR

    data = write_idx_dir(tmp_path / "mnist", n_train=1600, n_test=40)
    common = ["--data-dir", str(data), "--allow-custom-data", "--no-download", "--batch-size", "16"]
    common += ["--epochs", "6", "--report-dir", str(tmp_path / "reports")]
    out = tmp_path / "interrupted" / "lenet5.pt"
    process = subprocess.Popen(
        [sys.executable, "main.py", *common, "--out", str(out)],
        cwd=PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    for line in process.stdout:
        if line.startswith("epoch 2/6"):
            process.send_signal(signal.SIGINT)  # Ctrl-C during epoch 3
            break
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    resume = out.with_name("lenet5.resume.pt")
    assert f"continue with: python main.py --resume {resume}" in stdout and "Traceback" not in stderr

    resumed = run_script("main.py", *common, "--out", str(out), "--resume", str(resume))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "epoch 3/6" in resumed.stdout and "epoch 1/6" not in resumed.stdout
    straight = tmp_path / "straight" / "lenet5.pt"
    assert run_script("main.py", *common, "--out", str(straight)).returncode == 0
    a, b = torch.load(out, weights_only=True)["state_dict"], torch.load(straight, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
