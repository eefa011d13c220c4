"""Export trained LeNet-5 weights for other runtimes, and prove the export right.

    python export.py --format onnx --out checkpoints/lenet5.onnx
    python export.py --format torchscript --out checkpoints/lenet5.torchscript.pt
    python export.py --format safetensors --out checkpoints/lenet5.safetensors
    python export.py --format hub --out checkpoints/lenet5-hub      # a Hugging Face Hub folder

The exported model takes float32 N x 1 x 32 x 32 (any N) normalized as in training and returns
N x 10 logits. Every export is read back in its own runtime (onnxruntime, torch.jit.load, the
safetensors reader) and must give the checkpoint's argmax, and its logits within 1e-4 (ONNX,
TorchScript) or bit for bit (safetensors, hub), on real test images (synthetic ones without MNIST),
before it is moved into place. ONNX and TorchScript get their contract beside them as <out>.json;
the safetensors file and the hub folder carry it inside (extras/exports.py).
"""

import argparse
from pathlib import Path

from support.cli import (
    DEFAULT_CHECKPOINT,
    CliParser,
    UserError,
    add_device_flag,
    add_weights_flag,
    number,
    one_line,
    output_file,
    run_cli,
)

import torch

from data import DataSource, add_data_args, data_source, preprocess
from extras.exports import FORMATS, export, plan
from extras.model_card import publish_command
from helper import load_checkpoint
from support.devices import choose_device
from support.synthetic import synthetic_digits


def verification_images(source: DataSource, count: int) -> tuple[torch.Tensor, str]:
    """Real test images when MNIST is found, else synthetic digits of the same shape."""
    try:
        test_images = source.open().test_images[:count]
        if len(test_images) >= 2:  # the check runs a batch of 1 and a batch of the rest
            return preprocess(test_images), f"{len(test_images)} MNIST test images"
    except UserError as err:
        print(f"note: {err}\nnote: verifying on synthetic images instead")
    return preprocess(synthetic_digits(count, seed=0)[0]), f"{count} synthetic images (MNIST not found)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CliParser(__doc__)
    add_data_args(p)
    add_weights_flag(p)
    add_device_flag(p)
    p.add_argument("--format", choices=sorted(FORMATS), default="onnx", help="what to export to")
    out = "output file, or folder for hub (default: checkpoints/lenet5.onnx, .torchscript.pt, .safetensors, -hub/)"
    p.add_argument("--out", help=out)  # (its text: a file's name may not end in "/", a hub folder's may)
    p.add_argument("--verify-images", type=number(int, 2, 10_000), default=1000, help="test images to check it on")
    args = p.parse_args(argv)
    if args.out is not None:
        try:
            args.out = Path(args.out) if FORMATS[args.format].folder else output_file(args.out)
        except argparse.ArgumentTypeError as err:
            p.error(f"argument --out: {err}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    fmt = FORMATS[args.format]
    out = args.out or DEFAULT_CHECKPOINT.with_name(fmt.default_name)
    with plan(fmt, out, args.weights):  # (held for this export alone until it is written)
        device = choose_device(args.device)
        checkpoint = load_checkpoint(args.weights)  # a wrong --weights is said before any data is read
        images, source = verification_images(data_source(args), args.verify_images)
        check = export(checkpoint, fmt, out, images, source, device)
    files = [out / name for name in sorted(p.name for p in out.iterdir())] if fmt.folder else [out]
    size = sum(f.stat().st_size for f in files) / 1024
    beside = f" and {out.name}.json" if fmt.sidecar else ""
    exact = "bit for bit" if fmt.tolerance == 0 else f"max |logit difference| {check['max_abs_logit_diff']:.2e}"
    limit = "" if fmt.tolerance == 0 else f" (limit {fmt.tolerance:.0e})"
    print(one_line(f"wrote {out}{'/' if fmt.folder else ''} ({size:.0f} KiB){beside}"))
    print(f"verified in {fmt.runtime} on {source} (batches of 1 and {len(images) - 1}): argmax identical, "
          f"{exact}{limit}")  # fmt: skip
    if fmt.name == "hub":
        print(f"publish with (needs the network and `hf auth login`): {publish_command(str(out))}")


if __name__ == "__main__":
    run_cli(main)
