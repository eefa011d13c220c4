from runs import summarize


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
