"""Exports of trained weights for other runtimes and for the Hugging Face Hub, each proven right before it is kept.

One pipeline for every format (`export`): write it beside --out, run it in its own runtime on real
images at two batch sizes, compare the logits with the checkpoint's within the format's tolerance,
and only then rename it into place (with its contract, <out>.json, where the format cannot carry
it). A failed check, a full disk or a Ctrl-C leaves what was at --out before.

| format      | what it is                                   | read back with             | tolerance      |
|-------------|----------------------------------------------|----------------------------|----------------|
| onnx        | an ONNX graph, any batch size                | onnxruntime                | 1e-4           |
| torchscript | a TorchScript program (C++ libtorch loads it)| torch.jit.load             | 1e-4           |
| safetensors | the tensors, the metadata as JSON strings    | this project's reader      | 0 (bit for bit)|
| hub         | a Hugging Face Hub folder (safetensors, config.json, model card) | this project's reader | 0 |
"""

import copy
import hashlib
import io
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.cli import UserError

import torch

from extras.model_card import model_card
from helper import Checkpoint, load_checkpoint
from LeNet5 import INPUT_NORMALIZATION
from support import portable, signals
from support.files import Kind, OutputPlan, atomic_folder, atomic_outputs, file_sha256, json_object, json_text


def contract(num_classes: int) -> dict[str, Any]:
    """What an exported model expects and returns."""
    pad, mean, std = INPUT_NORMALIZATION["pad"], INPUT_NORMALIZATION["mean"], INPUT_NORMALIZATION["std"]
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


# --- each format: write it, and run what was written --------------------------------------------


def _plain(checkpoint: Checkpoint) -> torch.nn.Module:
    """The model as exporters want it: on the CPU, in the standard memory layout."""
    return copy.deepcopy(checkpoint.model("cpu")).to(memory_format=torch.contiguous_format)


def write_onnx(checkpoint: Checkpoint, path: Path, name: str) -> None:
    batch = torch.export.Dim("batch", min=1, max=65536)
    example = (torch.zeros(2, 1, 32, 32),)
    program = torch.onnx.export(_plain(checkpoint), example, input_names=["image"], output_names=["logits"],
                                dynamic_shapes=({0: batch},), dynamo=True, verbose=False)  # fmt: skip
    path.write_bytes(program.model_proto.SerializeToString())


def run_onnx(path: Path, images: torch.Tensor) -> torch.Tensor:
    with signals.deferred():  # a stop inside its initialization came out as "ImportError: initialization failed"
        import onnxruntime  # (or as "Exception ignored in ... _get_module_lock"); held, it is a stop like any other

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"image": images.numpy()})[0])


def write_torchscript(checkpoint: Checkpoint, path: Path, name: str) -> None:
    # TorchScript is deprecated in favour of torch.export, but it is still what C++ (libtorch) and many
    # deployments load; the warning says nothing the user can act on here.
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(_plain(checkpoint)), buffer)
    path.write_bytes(buffer.getvalue())  # Python's write: a full disk is one line (torch's C++ writer aborts)


def run_torchscript(path: Path, images: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu").eval()
    with torch.inference_mode():
        return loaded(images)


def _fields(checkpoint: Checkpoint) -> dict[str, Any]:
    return {**checkpoint.portable_fields(), "preprocessing": contract(checkpoint.config.get("num_classes", 10))}


def write_safetensors(checkpoint: Checkpoint, path: Path, name: str) -> None:
    path.write_bytes(portable.safetensors_bytes(checkpoint.state_dict, _fields(checkpoint)))


HUB_RECORD = portable.HUB_RECORD  # in config.json: the SHA-256 of each file of the hub export, as written


def write_hub(checkpoint: Checkpoint, folder: Path, name: str) -> None:
    """model.safetensors, README.md and config.json into an empty folder (atomic_folder moves it into place as
    `name`, which the card's commands use); config.json records the SHA-256 of each (hub_record)."""
    fields = _fields(checkpoint)
    (folder / portable.WEIGHTS_FILE).write_bytes(portable.safetensors_bytes(checkpoint.state_dict, fields))
    (folder / portable.CARD_FILE).write_bytes(model_card(fields, name).encode())
    written = {file: file_sha256(folder / file) for file in (portable.WEIGHTS_FILE, portable.CARD_FILE)}

    def config(own: str) -> bytes:  # (config.json's own SHA-256 is over its text with its own entry "")
        return json_text({**portable.hub_config(fields), HUB_RECORD: {**written, portable.CONFIG_FILE: own}}).encode()

    (folder / portable.CONFIG_FILE).write_bytes(config(hashlib.sha256(config("")).hexdigest()))


def _reader(kind: str) -> Callable[[Path, torch.Tensor], torch.Tensor]:
    def run(path: Path, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return load_checkpoint(path, kind=kind).model("cpu")(images)

    return run


@dataclass(frozen=True)
class Format:
    name: str
    default_name: str  # in checkpoints/
    folder: bool  # a folder, written whole
    write: Callable[[Checkpoint, Path, str], None]  # (checkpoint, the temporary path, the final name)
    run: Callable[[Path, torch.Tensor], torch.Tensor]  # logits from what was written, in its own runtime
    runtime: str
    tolerance: float  # the largest |logit difference| allowed; 0: bit for bit
    sidecar: bool  # the contract goes beside it as <out>.json (the safetensors layouts carry it inside)
    wrong_suffixes: tuple[str, ...] = ()  # another format's (or a checkpoint's): an --out named so is refused


FORMATS = {
    "onnx": Format(
        "onnx", "lenet5.onnx", False, write_onnx, run_onnx, "onnxruntime", 1e-4, True, (".pt", ".json", portable.SUFFIX)
    ),
    "torchscript": Format(
        "torchscript",
        "lenet5.torchscript.pt",
        False,
        write_torchscript,
        run_torchscript,
        "torch.jit.load",
        1e-4,
        True,
        (".onnx", ".json", portable.SUFFIX),
    ),  # fmt: skip
    "safetensors": Format(
        "safetensors", "lenet5.safetensors", False, write_safetensors, _reader("safetensors"), "safetensors", 0.0, False
    ),  # fmt: skip
    "hub": Format("hub", "lenet5-hub", True, write_hub, _reader("hub"), "safetensors", 0.0, False),
}


# --- the pipeline ------------------------------------------------------------------------------


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def plan(fmt: Format, out: Path, weights: Path) -> OutputPlan:
    """--out for `fmt`, checked before any work: not the checkpoint read, the name the format takes, a place
    that can be written, no file of the user's that only has its name (an earlier export of this program's is
    replaced); a hub folder only when it is new, empty, or an earlier export of this program's that nobody changed
    since (the SHA-256s its config.json records say). The plan holds
    --out for this export alone until its `with` block ends."""
    outputs = OutputPlan({"the checkpoint given as --weights": weights})
    example = fmt.default_name
    if fmt.folder:
        outputs.whole_folder(out, "--out", kind=HUB_FOLDER)
    else:  # a file there already is replaced only when it is an earlier export of this program's
        outputs.file(out, "--out", kind=export_kind(fmt), example=example)
        if fmt.sidecar:
            outputs.file(sidecar_path(out), "--out's .json", kind=sidecar_kind(fmt))
    if fmt.name == "safetensors" and out.suffix.lower() != portable.SUFFIX:
        raise UserError(f"--out {out}: a safetensors export is named *.safetensors, e.g. {example}")
    if out.suffix.lower() in fmt.wrong_suffixes:
        raise UserError(f"--out {out}: a {fmt.name} export should not be named {out.suffix}; e.g. {example}")
    if fmt.folder:
        _check_hub_folder(out)
        outputs.folder(out, "--out")  # the folder can be created and written (the check leaves none behind)
    outputs.lock(out, "--out")  # last: nothing after it can fail
    return outputs


def export_kind(fmt: Format) -> Kind:
    """An export file of `fmt` this program wrote: a safetensors file says so inside, the others by their .json,
    which holds the export's SHA-256 (a user's file beside a copied .json of ours is not ours)."""
    article = "an" if fmt.name[0] in "aeiou" else "a"
    if fmt.sidecar:

        def ours(path: Path) -> bool:
            fields = json_object(sidecar_path(path)) or {}
            return sidecar_kind(fmt).ours(sidecar_path(path)) and fields.get("sha256") == file_sha256(path)

        return Kind(f"{article} {fmt.name} export", ours)
    return Kind(f"{article} {fmt.name} export", portable.written_here)


def sidecar_kind(fmt: Format) -> Kind:
    """<out>.json as sidecar() writes it for `fmt`."""

    def ours(path: Path) -> bool:
        fields = json_object(path) or {}
        return fields.get("format") == fmt.name and {"verification", "preprocessing"} <= fields.keys()

    return Kind(f"the .json of a {fmt.name} export", ours)


def _check_hub_folder(out: Path) -> None:
    """A hub --out: a folder that is new, empty, or an earlier export of this program's that nobody changed since
    (a file that was not in it, or that changed, is the user's: never replaced)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; a hub export is a folder: give a new folder's name")
    problem = _hub_folder_problem(out)
    if problem:
        raise UserError(f"--out {out}{problem}")


def _hub_folder_problem(out: Path) -> str | None:
    """What makes the folder `out` one a hub export may not replace, in words to follow its name; None: it may."""
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    record = hub_record(out) if names else {}
    foreign = [name for name in names if name not in record]
    if foreign:
        return (f" holds files that are not an earlier export of this program's ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); give a new or empty folder")  # fmt: skip
    changed = [name for name in names if not _as_written(out / name, record[name])]
    if changed:
        it, was = ("it", "was") if len(changed) == 1 else ("them", "were")
        return f": {' and '.join(changed)} {was} changed since this program wrote {it}; move {it} or choose another " \
               "--out"  # fmt: skip
    return None


# Checked again as the new export takes the folder's place: one the user put there, or changed, meanwhile is kept.
HUB_FOLDER = Kind("a hub export", lambda folder: _hub_folder_problem(folder) is None)


def hub_record(folder: Path) -> dict[str, str]:
    """{file name: SHA-256 as written} that a hub export of this program's recorded in its config.json; {} for a
    folder without one (the user's, or an export of an older version, which recorded nothing)."""
    record = (json_object(folder / portable.CONFIG_FILE) or {}).get(HUB_RECORD)
    if not isinstance(record, dict) or sorted(record) != sorted(portable.HUB_FILES):
        return {}
    return {name: sha256 for name, sha256 in record.items() if isinstance(sha256, str) and len(sha256) == 64}


def _as_written(path: Path, sha256: str) -> bool:
    """Whether `path` is as the hub export wrote it (config.json: its SHA-256 with its own entry "", as written)."""
    own = f'"{sha256}"'.encode()
    try:
        if path.name != portable.CONFIG_FILE:
            return path.is_file() and file_sha256(path) == sha256
        text = path.read_bytes()
    except OSError:
        return False
    return text.count(own) == 1 and hashlib.sha256(text.replace(own, b'""')).hexdigest() == sha256


def export(checkpoint: Checkpoint, fmt: Format, out: Path, images: torch.Tensor, source: str,
           device: torch.device | str = "cpu") -> dict[str, Any]:  # fmt: skip
    """Write `fmt` beside `out`, run it on `images` (batches of 1 and of the rest) in its runtime, compare with
    the checkpoint's model on `device`, and move it into place only if it agrees; returns the check."""
    model, batches = checkpoint.model(device), (images[:1], images[1:])  # (each compared at the same batch size)
    with torch.inference_mode():
        expected = torch.cat([model(batch.to(device)).float().cpu() for batch in batches])
    with _staged(fmt, out) as (tmp, tmp_sidecar):
        fmt.write(checkpoint, tmp, out.name)
        got = torch.cat([fmt.run(tmp, batch) for batch in batches]).float()
        difference = (got - expected).abs().max().item()
        check = {
            "images": len(images),
            "argmax_identical": bool((got.argmax(1) == expected.argmax(1)).all()),
            "max_abs_logit_diff": difference,
        }
        if not check["argmax_identical"] or difference > fmt.tolerance:
            raise UserError(f"the {fmt.name} export does not match the checkpoint ({check}); nothing was written")
        if tmp_sidecar is not None:
            tmp_sidecar.write_text(json_text(sidecar(checkpoint, fmt, source, check, file_sha256(tmp))))
    return check


@contextmanager
def _staged(fmt: Format, out: Path) -> Iterator[tuple[Path, Path | None]]:
    """Temporary places beside `out` (and its .json) that take their names only when the block succeeds."""
    if fmt.folder:
        with atomic_folder(out, portable.HUB_FILES) as tmp:
            yield tmp, None
    elif fmt.sidecar:
        with atomic_outputs(out, sidecar_path(out)) as (tmp, tmp_sidecar):
            yield tmp, tmp_sidecar
    else:
        with atomic_outputs(out) as (tmp,):
            yield tmp, None


def sidecar(checkpoint: Checkpoint, fmt: Format, source: str, check: dict[str, Any], sha256: str) -> dict[str, Any]:
    """<out>.json: the contract, where the weights came from, how the export was verified, the export's SHA-256."""
    fields = {**contract(checkpoint.config.get("num_classes", 10)), "format": fmt.name, "sha256": sha256}
    fields.update(weights=str(checkpoint.path), verified_on=source, verification=check)
    fields["test_accuracy"] = checkpoint.metrics.get("test_accuracy")
    return fields
