from support.cli import UserError

import pytest

from scripts.runs import LOG_MARK, is_own_log, run_timed, summarize


def epochs(*accuracies: float, split: str = "test") -> list[dict]:
    return [{"epoch": i, "eval_split": split, "eval_accuracy": a, "finished_at": 100.0 + 10 * i,
             "images_per_second": 1000.0 + i} for i, a in enumerate(accuracies, start=1)]  # fmt: skip


def test_time_to_target_is_the_end_of_the_first_epoch_reaching_it():
    metrics = {"test_accuracy": 0.992, "train_seconds": 30.0, "epochs": epochs(0.98, 0.991, 0.989, 0.992)}
    run = summarize(metrics, started=95.0, wall_seconds=60.0, target=0.99)
    assert run.epoch_reached == 2 and run.seconds_to_target == 100 + 20 - 95
    assert run.final_test_accuracy == 0.992 and run.best_eval_accuracy == 0.992 and run.epochs == 4
    assert run.images_per_second == 1002.5  # the median of the epochs


def test_validation_accuracy_never_counts_as_reaching_a_test_target():
    metrics = {"test_accuracy": 0.995, "train_seconds": 30.0, "epochs": epochs(0.995, 0.996, split="val")}
    run = summarize(metrics, started=0.0, wall_seconds=60.0, target=0.99)
    assert run.epoch_reached is None and run.seconds_to_target is None
    assert run.eval_split == "val" and run.final_eval_accuracy == 0.996


def test_a_failed_run_is_quoted_by_its_error_line_or_its_end(tmp_path):
    """Under torchrun the reason is followed by torchrun's own summary: quote the reason."""
    script = "print('loading'); print('error: rank 0: --batch-size 63 must split'); print('torchrun summary'); exit(2)"
    with pytest.raises(UserError) as err:
        run_timed(["-c", script], tmp_path / "m.json", tmp_path / "log.txt", 0.99)
    assert str(err.value).endswith("failed (exit 2): error: rank 0: --batch-size 63 must split")
    with pytest.raises(UserError) as err:
        run_timed(
            ["-c", "print('a'); print('b'); print('c'); print('d'); exit(1)"],
            tmp_path / "m.json",
            tmp_path / "log.txt",
            0.99,
        )
    assert str(err.value).endswith("failed (exit 1): b\nc\nd")


def test_run_as_a_program_it_says_it_is_a_helper_module_not_a_command():
    """`python -m scripts.runs` once ended at once with status 0 and no word, whatever it was given."""
    from conftest import run_script

    done = run_script("-m", "scripts.runs")
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.startswith("error: scripts/runs.py is a helper module, not a command: python -m scripts.bench")
    assert len(done.stderr.splitlines()) == 1 and done.stderr.rstrip().endswith("run one of those")
    done = run_script("-m", "scripts.runs", "--bogus-flag")
    assert done.returncode == 2 and "unrecognized arguments: --bogus-flag" in done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    done = run_script("-m", "scripts.runs", "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m scripts.runs"), done.stderr
    assert "It is a helper module, not a command" in done.stdout


def test_the_log_names_its_command_and_a_log_of_the_users_is_never_replaced(tmp_path):
    """A train.log of the user's in a run's folder was overwritten by the run's output: refused before the run
    starts, the file as it was; the log run_timed writes is known by its first line, and replaced."""
    log, ran = tmp_path / "train.log", tmp_path / "ran"
    command = ["-c", f"open({str(ran)!r}, 'a').write('x'); print('trained'); exit(3)"]
    for _ in range(2):  # the second run replaces the first one's log
        with pytest.raises(UserError, match="failed \\(exit 3\\): trained$"):
            run_timed(command, tmp_path / "m.json", log, 0.99)
    assert log.read_text().splitlines() == [f"{LOG_MARK}{' '.join(command)}", "trained"] and ran.read_text() == "xx"
    log.write_text("my own log\n")
    with pytest.raises(UserError, match=f"the run's log {log} exists and is not a training log this program wrote"):
        run_timed(command, tmp_path / "m.json", log, 0.99)
    assert log.read_text() == "my own log\n" and ran.read_text() == "xx"  # not run
    log.write_text("device: cpu; recipe: {'name': 'default'}\ndata: 96 training\n")  # one written before the mark
    assert is_own_log(log)
