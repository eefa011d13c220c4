import json
import os

import pytest
import torch
from conftest import PROJECT_DIR
from torch import nn

from data import eval_loader
from eval import classify, evaluate, format_report, write_report
from LeNet5 import INPUT_NORMALIZATION


class FixedPredictions(nn.Module):
    """A 'model' whose i-th input digit carries the class it should predict in its first pixel (grey level 0-9)."""

    def forward(self, x):
        mean, std, pad = INPUT_NORMALIZATION["mean"], INPUT_NORMALIZATION["std"], INPUT_NORMALIZATION["pad"]
        grey = ((x[:, 0, pad, pad] * std + mean) * 255).round().long()  # undo the padding and normalization
        return nn.functional.one_hot(grey, 10).float() * 5.0


def loader_for(predictions: list[int], labels: list[int], batch_size: int = 3):
    digits = torch.zeros(len(labels), 28, 28, dtype=torch.uint8)
    digits[:, 0, 0] = torch.tensor(predictions, dtype=torch.uint8)
    return eval_loader(digits, torch.tensor(labels), batch_size=batch_size)


LABELS = [0, 0, 1, 1, 1, 2, 3, 9, 9, 9]
PREDICTIONS = [0, 1, 1, 1, 2, 2, 3, 9, 9, 4]


def test_metrics_against_a_hand_computed_confusion_matrix():
    result = evaluate(FixedPredictions(), loader_for(PREDICTIONS, LABELS), "cpu")
    expected = [[0] * 10 for _ in range(10)]
    for true, pred in zip(LABELS, PREDICTIONS):
        expected[true][pred] += 1
    assert result.confusion_matrix == expected
    assert result.accuracy == pytest.approx(7 / 10)
    assert result.correct == 7 and result.total == 10
    per_class = result.per_class_accuracy
    assert per_class[0] == 0.5 and per_class[1] == pytest.approx(2 / 3) and per_class[9] == pytest.approx(2 / 3)
    assert per_class[2] == 1.0 and per_class[3] == 1.0
    assert per_class[5] != per_class[5]  # no images of 5: NaN, not a made-up 0%
    assert result.metrics()["per_class_accuracy"][5] is None  # and null in JSON, which has no NaN
    assert torch.equal(result.predictions, torch.tensor(PREDICTIONS))
    report = result.classification_report_dict
    assert report["1"]["precision"] == pytest.approx(2 / 3) and report["1"]["recall"] == pytest.approx(2 / 3)
    assert torch.allclose(result.probabilities.sum(1), torch.ones(10))


def test_report_text_follows_the_write_up():
    result = evaluate(FixedPredictions(), loader_for(PREDICTIONS, LABELS), "cpu")
    lines = format_report(result).splitlines()
    assert lines[0] == "Accuracy of the network on test images: 70.00%"
    assert lines[1] == "Accuracy of 0: 50.00%"
    assert lines[2] == "Accuracy of 1: 66.67%"
    assert "Confusion matrix (rows: true digit, columns: predicted digit):" in lines
    assert any(line.split() == ["9", "0", "0", "0", "0", "1", "0", "0", "0", "0", "2"] for line in lines)
    assert "precision    recall  f1-score   support" in format_report(result)


def test_write_report_files(tmp_path):
    result = evaluate(FixedPredictions(), loader_for(PREDICTIONS, LABELS), "cpu")
    paths = write_report(result, torch.rand(10, 28, 28), tmp_path, {"weights": "x.pt"})
    assert [p.name for p in paths] == ["metrics.json", "confusion_matrix.png", "misclassified.png"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(0.7) and metrics["weights"] == "x.pt"
    assert metrics["per_class_accuracy"][5] is None
    for png in paths[1:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_classify_matches_the_model_on_preprocessed_digits(tiny_model):
    from data import preprocess

    digits = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    answers = classify(tiny_model, digits, topk=3)
    expected = torch.softmax(tiny_model.eval()(preprocess(digits)), dim=1)
    assert [a["prediction"] for a in answers] == expected.argmax(1).tolist()
    for answer, row in zip(answers, expected):
        assert answer["probabilities"] == pytest.approx(row.tolist(), abs=1e-6)
        assert [t["digit"] for t in answer["topk"]] == row.topk(3).indices.tolist()


FULL_DISK_REPORT = """
import sys, torch
from pathlib import Path
from eval import evaluate, write_report
from data import eval_loader
from LeNet5 import LeNet5
from support.cli import UserError
torch.manual_seed(0)
digits = torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8)
result = evaluate(LeNet5(), eval_loader(digits, torch.arange(50) % 10), "cpu")
try:
    write_report(result, digits, Path(sys.argv[1]), figures={"loss.png": lambda path: path.write_bytes(b"new")})
except UserError as err:
    print(err)
"""


def test_a_full_disk_leaves_the_previous_report_whole(tmp_path):
    """Files may grow to 20 kB (RLIMIT_FSIZE): metrics.json fits, the first figure does not. Every file of the
    earlier report stays as it was (never a folder mixing two runs), and the message says so."""
    from conftest import limited, run_script

    names = ["metrics.json", "confusion_matrix.png", "misclassified.png", "loss.png"]
    for name in names:
        (tmp_path / name).write_text(f"the previous {name}")
    done = run_script("-c", FULL_DISK_REPORT, str(tmp_path), preexec_fn=limited("RLIMIT_FSIZE", 20_000))
    assert "File too large; what was there before is unchanged" in done.stdout, done.stdout + done.stderr
    assert f"in {tmp_path}" in done.stdout and ".tmp" not in done.stdout  # the files by name, not their temporaries
    assert {name: (tmp_path / name).read_text() for name in names} == {name: f"the previous {name}" for name in names}
    assert sorted(os.listdir(tmp_path)) == sorted(names)  # no temporary file left


def test_write_report_adds_the_figures_it_is_given(tmp_path):
    result = evaluate(FixedPredictions(), loader_for(PREDICTIONS, LABELS), "cpu")
    paths = write_report(result, torch.rand(10, 28, 28), tmp_path, figures={"x.png": lambda p: p.write_bytes(b"x")})
    assert [p.name for p in paths][-1] == "x.png" and (tmp_path / "x.png").read_bytes() == b"x"


def test_json_results_that_cannot_be_written_are_an_error(tmp_path, weights, idx_dir):
    """`eval.py --json > /dev/full`: the JSON is the product; lost, it is one line and a non-zero status, not 0."""
    import subprocess
    import sys

    from conftest import PROJECT_DIR

    flags = ["--data-dir", idx_dir, "--allow-custom-data", "--no-download", "--cache-dir", tmp_path / "cache"]
    flags += ["--weights", weights, "--report-dir", tmp_path / "report", "--json"]
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "eval.py", *map(str, flags)], cwd=PROJECT_DIR, stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == "error: cannot write the results to stdout: No space left on device\n"
    assert (tmp_path / "report" / "metrics.json").is_file()  # the files are written all the same


def test_a_batch_size_beyond_the_test_set_is_one_line_before_any_work(cli, tmp_path, weights, idx_dir):
    """Not a traceback from deep in the loader (islice's "Stop argument ... must be ... <= sys.maxsize")."""
    from conftest import assert_user_error

    flags = ["--data-dir", idx_dir, "--allow-custom-data", "--no-download", "--cache-dir", tmp_path / "cache"]
    flags += ["--weights", weights, "--report-dir", tmp_path / "report"]
    done = cli("eval", *flags, "--batch-size", "99999999999999999999")
    assert_user_error(done, "argument --batch-size: must be an integer >= 1 and <= 10000, got 99999999999999999999")
    assert not (tmp_path / "report").exists()
    assert cli("eval", *flags, "--batch-size", "10000").returncode == 0  # the whole test set in one batch


def test_a_report_removes_only_the_files_an_earlier_report_listed(cli, tmp_path, weights, idx_dir):
    """eval.py removed any figure of this program's at a report file's name that it does not write itself: a
    predict.py --out accuracy.png in the folder was deleted without a word. Only what an earlier report's
    metrics.json lists goes."""
    reports = tmp_path / "reports"
    reports.mkdir()
    image = PROJECT_DIR / "examples" / "seven.jpg"
    assert cli("predict", image, "--weights", weights, "--out", reports / "accuracy.png").returncode == 0
    figure = (reports / "accuracy.png").read_bytes()
    data = ["--data-dir", idx_dir, "--allow-custom-data", "--no-download", "--report-dir", reports]
    assert cli("eval", "--weights", weights, *data).returncode == 0
    assert (reports / "accuracy.png").read_bytes() == figure
    listed = json.loads((reports / "metrics.json").read_text())["files"]
    assert sorted(listed) == sorted(p.name for p in reports.iterdir() if p.name != "accuracy.png")
