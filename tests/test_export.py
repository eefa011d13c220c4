import json

import onnxruntime
import pytest
import torch

from export import export, run_torchscript
from helper import save_model


@pytest.fixture
def weights(tmp_path, tiny_model):
    path = tmp_path / "model.pt"
    save_model(path, tiny_model, 1, {"test_accuracy": 0.5}, {})
    return path


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_is_verified_in_its_runtime(tmp_path, weights, tiny_model, fmt):
    images = torch.randn(9, 1, 32, 32)
    out = tmp_path / f"model.{fmt}"
    check = export(weights, fmt, out, images, "9 random images")
    assert check["argmax_identical"] and check["max_abs_logit_diff"] <= 1e-4
    sidecar = json.loads((tmp_path / f"model.{fmt}.json").read_text())
    assert sidecar["input"]["shape"] == ["batch", 1, 32, 32] and sidecar["mean"] == 0.1307

    # Independently of export.verify: another batch size, straight through the runtime.
    x = torch.randn(5, 1, 32, 32)
    expected = tiny_model.eval()(x).detach()
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    else:
        got = run_torchscript(out, x)
    assert got.shape == (5, 10)
    assert torch.allclose(got, expected, atol=1e-4)
