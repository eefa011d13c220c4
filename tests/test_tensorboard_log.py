"""main.py --tensorboard: what TensorBoard's own reader finds in the run folder, against what the
run recorded elsewhere (its checkpoint, its metrics.json, the optimizer's own learning rate)."""

import importlib
import json
import re

from support.cli import run_cli

import pytest
import torch
from conftest import assert_user_error, write_idx_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from extras.tensorboard_log import TensorBoardLog
from helper import load_checkpoint
from support.recipes import Recipe, run_name

pytestmark = pytest.mark.xdist_group("tensorboard")  # one logged run for the whole file
EVERYTHING = {"scalars": 0, "images": 0, "histograms": 0, "tensors": 0}  # 0: keep every event, not a sample


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A two-epoch run with --tensorboard, the learning rate of every optimizer step recorded as it ran."""
    tmp_path, used_lrs = tmp_path_factory.mktemp("logged"), []
    original_step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        used_lrs.append(self.param_groups[0]["lr"])
        return original_step(self, *args, **kwargs)

    data = write_idx_dir(tmp_path / "mnist", gz=False)
    out, reports, runs = tmp_path / "lenet5.pt", tmp_path / "reports", tmp_path / "runs"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.SGD, "step", recording_step)
        run_cli(importlib.import_module("main").main, [
            "--data-dir", str(data), "--allow-custom-data", "--no-download", "--batch-size", "16", "--epochs", "2",
            "--out", str(out), "--report-dir", str(reports), "--tensorboard", str(runs),
        ])  # fmt: skip
    (run_dir,) = runs.iterdir()
    events = EventAccumulator(str(run_dir), size_guidance=EVERYTHING)
    events.Reload()
    return run_dir, events, load_checkpoint(out), json.loads((reports / "metrics.json").read_text()), used_lrs


def values(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_scalars_match_the_run(logged):
    run_dir, events, checkpoint, metrics, used_lrs = logged
    assert re.fullmatch(r"\d{8}-\d{6}_default-seed0", run_dir.name)
    history = checkpoint.train_state["history"]
    losses = history["step_losses"]
    assert [s for s, _ in values(events, "train/loss")] == list(range(1, len(losses) + 1))
    assert [v for _, v in values(events, "train/loss")] == pytest.approx(losses, rel=1e-6)
    assert [v for _, v in values(events, "train/learning_rate")] == pytest.approx(used_lrs, rel=1e-6)
    epochs = history["epochs"]
    assert values(events, "epoch/test_accuracy") == [(e["epoch"], pytest.approx(e["eval_accuracy"])) for e in epochs]
    assert values(events, "epoch/train_accuracy") == [(e["epoch"], pytest.approx(e["train_accuracy"])) for e in epochs]
    assert [v for _, v in values(events, "final/test_accuracy")] == [pytest.approx(metrics["accuracy"])]


def test_images_histograms_and_hparams(logged):
    _, events, checkpoint, _, _ = logged
    kernels = events.Images("c1_kernels")
    assert [k.step for k in kernels] == [1, 2] and kernels[0].width > 500  # a figure, with its colour scale
    (wrong,) = events.Images("misclassified")
    assert 400 <= wrong.width <= 900  # TensorBoard's card shows it near its own size: the captions stay readable
    expected = {f"weights/{name}" for name in checkpoint.state_dict if name != "c3.mask"}
    assert set(events.Tags()["histograms"]) == expected
    assert [e.step for e in events.Histograms("weights/c1.weight")] == [1, 2]
    assert "epoch/train_loss" not in events.Tags()["scalars"]  # (drawn off the chart by TensorBoard's defaults)


def logged_hparams(events: EventAccumulator) -> dict:
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in hparams.items()}


def test_the_hparams_are_the_settings_the_run_used_in_their_own_types(logged):
    _, events, checkpoint, _, _ = logged
    hparams = logged_hparams(events)
    recipe = checkpoint.recipe  # the default recipe: SGD with Nesterov momentum, affine distortions
    assert hparams["nesterov"] is True and hparams["augment"] is True and hparams["c3_table"] is True
    assert hparams["lr"] == recipe["lr"] and hparams["optimizer"] == "sgd" and hparams["epochs"] == 2
    assert not {"beta2", "ema_decay", "elastic_sigma", "elastic_alpha", "limit", "weight_decay"} & set(hparams)
    assert {"rotation", "zoom", "shift", "momentum", "label_smoothing", "seed"} <= set(hparams)


def test_run_folders_sort_in_time_and_never_collide(tmp_path):
    recipe = Recipe(name="fast", seed=7)
    assert run_name("fast", 7, now=1_000_000_000) < run_name("fast", 7, now=1_000_000_001)
    assert run_name("fast", 7, now=0).endswith("_fast-seed7")
    first = TensorBoardLog.start(tmp_path, recipe)
    second = TensorBoardLog.start(tmp_path, recipe)
    try:
        assert first.run_dir != second.run_dir and first.run_dir.is_dir() and second.run_dir.is_dir()
    finally:
        first.writer.close()
        second.writer.close()


def test_tensorboard_folder_that_is_a_file_is_one_line(tmp_path, cli):
    data = write_idx_dir(tmp_path / "mnist", gz=False)
    (tmp_path / "runs").write_text("not a folder")
    outputs = ["--out", tmp_path / "m.pt", "--report-dir", tmp_path / "r", "--tensorboard", tmp_path / "runs"]
    done = cli("main", "--data-dir", data, "--allow-custom-data", "--no-download", "--epochs", "1", *outputs)
    assert_user_error(done, "is a file, not a folder")
    assert not (tmp_path / "m.pt").exists()


def run_with_a_failing_log(tmp_path, cli, monkeypatch, fault) -> tuple:
    data = write_idx_dir(tmp_path / "mnist", gz=False)
    out = tmp_path / "run" / "lenet5.pt"
    fault(monkeypatch)
    flags = ["--data-dir", data, "--allow-custom-data", "--no-download", "--batch-size", "16", "--epochs", "2"]
    done = cli("main", *flags, "--out", out, "--report-dir", tmp_path / "r", "--tensorboard", tmp_path / "runs")
    return done, out


def folder_removed_after_epoch_1(monkeypatch) -> None:
    """Someone cleans runs/ while the run goes on: the log's folder disappears before epoch 1 is logged."""
    import shutil

    from extras import tensorboard_log

    log_epochs = tensorboard_log.TensorBoardLog._log_new_epochs

    def removed_first(self, state):
        shutil.rmtree(self.run_dir)
        return log_epochs(self, state)

    monkeypatch.setattr(tensorboard_log.TensorBoardLog, "_log_new_epochs", removed_first)


def disk_full_at_the_start(monkeypatch) -> None:
    import errno
    import os

    from torch.utils.tensorboard import writer

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer.FileWriter, "__init__", full)


@pytest.mark.parametrize("fault", [folder_removed_after_epoch_1, disk_full_at_the_start])
def test_a_log_that_cannot_be_written_is_one_warning_and_the_run_goes_on(tmp_path, cli, monkeypatch, fault):
    done, out = run_with_a_failing_log(tmp_path, cli, monkeypatch, fault)
    assert done.returncode == 0 and out.exists() and out.with_suffix(".json").exists(), done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: the TensorBoard log failed")]
    assert len(warnings) == 1 and "Traceback" not in done.stderr and "Exception in thread" not in done.stderr
    assert "epoch 2/2" in done.stdout and "Accuracy of the network on test images" in done.stdout
