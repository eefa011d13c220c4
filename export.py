"""Export trained LeNet-5 weights for other runtimes, and prove the export right.

    python export.py --format onnx --out checkpoints/lenet5.onnx
    python export.py --format torchscript --out checkpoints/lenet5.torchscript.pt
    python export.py --format safetensors --out checkpoints/lenet5.safetensors
    python export.py --format hub --out checkpoints/lenet5-hub      # a Hugging Face Hub folder

The exported model takes float32 N x 1 x 32 x 32 (any N) normalized as in training and
returns N x 10 logits; the contract is written next to it as <out>.json. Every export is
loaded back in its own runtime (onnxruntime, torch.jit.load) and must give the same
argmax as PyTorch and logits within 1e-4 on real test images (synthetic ones without MNIST).
safetensors and hub (weights_formats.py) carry the contract in the file and config.json instead,
and are read back with safetensors: their logits must equal the checkpoint's exactly.
"""

import argparse
import copy
import io
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from cli import (
    DEFAULT_CHECKPOINT,
    CliParser,
    UserError,
    add_device_flag,
    add_weights_flag,
    check_output_file,
    number,
    run_cli,
)

import torch

import weights_formats
from data import DataSource, add_data_args, data_source, preprocess
from devices import choose_device
from helper import atomic_outputs, json_text, load_model
from LeNet5 import INPUT_NORMALIZATION

TOLERANCE = 1e-4


def contract(normalization: dict[str, float], num_classes: int) -> dict[str, Any]:
    """What the exported model expects and returns, from the normalization its checkpoint records."""
    pad, mean, std = normalization["pad"], normalization["mean"], normalization["std"]
    logits = {"name": "logits", "dtype": "float32", "shape": ["batch", num_classes], "note": "softmax: probabilities"}
    return {
        "input": {"name": "image", "dtype": "float32", "shape": ["batch", 1, 28 + 2 * pad, 28 + 2 * pad]},
        "output": logits,
        "preprocessing": [
            "start from a uint8 28x28 MNIST-style digit: light ink (255) on black (0), centred",
            f"pad {pad} pixels of 0 on every side -> {28 + 2 * pad}x{28 + 2 * pad}",
            "x = pixel / 255",
            f"x = (x - {mean}) / {std}",
        ],
        "mean": mean,
        "std": std,
    }


def export_onnx(model: torch.nn.Module, path: Path) -> None:
    example = torch.zeros(2, 1, 32, 32)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.onnx.export(
        model,
        (example,),
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        dynamo=True,
        verbose=False,
    )
    program.save(str(path))


# TorchScript is deprecated in favour of torch.export, but it is still what C++ (libtorch) and
# many deployments load; the warning says nothing the user can act on here.
_quiet_jit = warnings.catch_warnings


def export_torchscript(model: torch.nn.Module, path: Path) -> None:
    buffer = io.BytesIO()
    with _quiet_jit():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(model), buffer)
    # Python's write: a full disk is an OSError (one line), where torch.jit.save's C++ writer aborts the process.
    path.write_bytes(buffer.getvalue())


def run_onnx(path: Path, images: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"image": images.numpy()})[0])


def run_torchscript(path: Path, images: torch.Tensor) -> torch.Tensor:
    with _quiet_jit():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu").eval()
    with torch.inference_mode():
        return loaded(images)


FORMATS = {"onnx": (export_onnx, run_onnx), "torchscript": (export_torchscript, run_torchscript)}


def verification_images(source: DataSource, count: int) -> tuple[torch.Tensor, str]:
    """Real test images when MNIST is found, else random uint8 digits of the same shape."""
    try:
        test_images = source.open().test_images[:count]
        if len(test_images) >= 2:  # the check runs a batch of 1 and a batch of the rest
            return preprocess(test_images), f"{len(test_images)} MNIST test images"
    except UserError as err:
        print(f"note: {err}\nnote: verifying on random images instead")
    g = torch.Generator().manual_seed(0)
    digits = torch.randint(0, 256, (count, 28, 28), generator=g, dtype=torch.uint8)
    return preprocess(digits), f"{count} synthetic images (MNIST not found)"


def verify(fmt: str, path: Path, model: torch.nn.Module, images: torch.Tensor) -> dict[str, Any]:
    """Run the file in its runtime (on the CPU) at two batch sizes; compare argmax and logits with
    PyTorch's on the model's own device."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        expected = model(images.to(device)).float().cpu()
    got = torch.cat([FORMATS[fmt][1](path, images[:1]), FORMATS[fmt][1](path, images[1:])])
    max_diff = (got - expected).abs().max().item()
    same_argmax = bool((got.argmax(1) == expected.argmax(1)).all())
    return {"images": len(images), "argmax_identical": same_argmax, "max_abs_logit_diff": max_diff}


def export(
    model: torch.nn.Module, fmt: str, out: Path, images: torch.Tensor, sidecar: Callable[[dict[str, Any]], dict]
) -> dict[str, Any]:
    """Export, verify in the target runtime, then move the file and its <out>.json (`sidecar(check)`) into
    place together: a failed check, or a disk that fills on either, leaves both as they were."""
    # Exporters want the plain layout, on the CPU; the checks compare with `model` where it runs.
    exported = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format)
    with atomic_outputs(out, sidecar_path(out)) as (tmp, tmp_sidecar):
        FORMATS[fmt][0](exported, tmp)
        check = verify(fmt, tmp, model, images)
        if not check["argmax_identical"] or check["max_abs_logit_diff"] > TOLERANCE:
            raise UserError(f"the {fmt} export does not match PyTorch ({check}); nothing was written")
        tmp_sidecar.write_text(json_text(sidecar(check)))
    return check


def sidecar_fields(
    fmt: str, weights: Path, checkpoint: dict[str, Any], source: str, check: dict[str, Any]
) -> dict[str, Any]:
    """<out>.json: the contract, where the weights came from, how the export was verified."""
    normalization = checkpoint.get("normalization", INPUT_NORMALIZATION)  # (format 1 did not always record it)
    fields = {**contract(normalization, checkpoint["config"].get("num_classes", 10)), "format": fmt}
    fields.update(weights=str(weights), verified_on=source, verification=check)
    fields["test_accuracy"] = checkpoint.get("metrics", {}).get("test_accuracy")
    return fields


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CliParser(__doc__)
    add_data_args(p)
    add_weights_flag(p)
    add_device_flag(p)
    formats = sorted([*FORMATS, *weights_formats.FORMATS])
    p.add_argument("--format", choices=formats, default="onnx", help="what to export to")
    out = "output file, or folder for hub (default: checkpoints/lenet5.onnx, .torchscript.pt, .safetensors, -hub/)"
    p.add_argument("--out", type=Path, help=out)
    p.add_argument("--verify-images", type=number(int, 2, 10_000), default=1000, help="test images to check it on")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.format in weights_formats.FORMATS:  # safetensors and hub: weights_formats.py
        images = partial(verification_images, data_source(args), args.verify_images)
        weights_formats.export_cli(args.weights, args.format, args.out, images, contract)
        return
    suffix = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}[args.format]
    out = args.out or DEFAULT_CHECKPOINT.with_name(f"lenet5{suffix}")
    check_output_file(out, "--out", example=f"lenet5{suffix}")
    check_output_file(sidecar_path(out), "--out's .json")
    if out.resolve() == args.weights.resolve():
        raise UserError(f"--out {out} is the checkpoint being exported; choose another file name")
    wrong_suffix = {"onnx": (".pt", ".json"), "torchscript": (".onnx", ".json")}[args.format]
    if out.suffix.lower() in wrong_suffix:
        raise UserError(f"--out {out}: a {args.format} export should not be named {out.suffix}; e.g. lenet5{suffix}")
    model, checkpoint = load_model(args.weights, choose_device(args.device))  # (a wrong --weights: before the data)
    images, source = verification_images(data_source(args), args.verify_images)
    fields = partial(sidecar_fields, args.format, args.weights, checkpoint, source)
    check = export(model, args.format, out, images, fields)
    print(
        f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB) and {out.name}.json\n"
        f"verified in {'onnxruntime' if args.format == 'onnx' else 'torch.jit.load'} on {source} "
        f"(batches of 1 and {len(images) - 1}): argmax identical, max |logit difference| "
        f"{check['max_abs_logit_diff']:.2e} (limit {TOLERANCE:.0e})"
    )


if __name__ == "__main__":
    run_cli(main)
