import json

from conftest import run_script


def test_bench_quick_runs_end_to_end_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    done = run_script("bench.py", "--quick", "--rounds", "1", "--json", str(out), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "package / baseline:" in done.stdout
    result = json.loads(out.read_text())
    for kind in ("baseline", "package"):
        row = result["training"][kind]
        assert row["images_per_second"] > 0 and row["seconds_per_epoch"] > 0 and row["peak_rss_mib"] > 0
    assert result["speedup"] > 0 and result["inference_images_per_second"] > 0
    assert result["hardware"]["flops_per_training_image"] > 2e6  # ~2.26 MFLOP: forward + backward of LeNet-5
    assert result["time_to_accuracy"]["epochs"] == 1
    assert result["data"] == "synthetic (--quick)"
