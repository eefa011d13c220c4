"""Weights in the formats the PyTorch ecosystem shares, written by export.py and read by every --weights:

- one `.safetensors` file: the tensors and, as its metadata, the model config, the preprocessing
  contract, the metrics and the recipe. No pickle: reading it never runs code, and any language reads it.
- the Hugging Face Hub layout, a folder with model.safetensors (that same file), config.json
  (LeNet5's constructor arguments at the top level, as huggingface_hub's PyTorchModelHubMixin reads
  them, plus the rest) and a README.md model card.

Both are read back into the dict that helper.load_checkpoint returns, with the same checks, so a
damaged or foreign file is one line (CheckpointError) like a damaged `.pt`.
"""

import contextlib
import inspect
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cli import DEFAULT_CHECKPOINT, UserError, check_output_file, resolve_output

import torch

from devices import place_model
from helper import CheckpointError, _check_contents, _umask, atomic_output, load_model
from LeNet5 import INPUT_NORMALIZATION, LeNet5
from model_card import PUBLISH_COMMAND, model_card
from recipes import with_added_fields

FORMATS = ("safetensors", "hub")
SUFFIX = ".safetensors"
WEIGHTS_FILE, CONFIG_FILE, CARD_FILE = "model.safetensors", "config.json", "README.md"
HUB_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)
LAYOUT_VERSION = 1  # of the metadata and config.json written here
JSON_FIELDS = ("config", "normalization", "preprocessing", "metrics", "recipe", "data", "epoch")


# --- reading ------------------------------------------------------------------------------------


def claims(path: Path) -> bool:
    """Whether `path` is for this module rather than torch.load: a .safetensors file, or a folder
    with model.safetensors or config.json in it (an incomplete hub folder is then refused by name)."""
    path = Path(path)
    if path.is_dir():
        return (path / WEIGHTS_FILE).exists() or (path / CONFIG_FILE).exists()
    return path.suffix.lower() == SUFFIX


def read_checkpoint(path: Path, resumable: bool = False) -> dict[str, Any]:
    """A .safetensors file or a hub folder as helper.load_checkpoint's dict, checked alike."""
    path = Path(path)
    checkpoint = read_hub(path) if path.is_dir() else read_safetensors(path)
    if resumable:
        raise CheckpointError(
            f"{path}: an export holds the weights only, no training state to resume from (it can still be "
            "evaluated); start a new run without --resume"
        )
    return checkpoint


def read_safetensors(path: Path) -> dict[str, Any]:
    """The file's tensors, and everything else from its metadata (which a foreign file lacks)."""
    tensors, metadata = _read_tensors(path)
    if metadata.get("architecture") != "LeNet5" or "config" not in metadata:
        raise CheckpointError(
            f"{path}: a safetensors file without this project's LeNet5 metadata (another model's, or written "
            "by other code); export one with `python export.py --format safetensors`"
        )
    _check_version(path, metadata.get("layout_version", "1"))
    fields = {name: _parse_json(path, metadata[name], f"metadata {name!r}") for name in JSON_FIELDS if name in metadata}
    return _checked(path, tensors, fields)


def read_hub(folder: Path) -> dict[str, Any]:
    """config.json says what the model is (as for huggingface_hub); model.safetensors holds the weights."""
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: a hub folder needs {name}, and it has none; export it again")
    config = _parse_json(folder / CONFIG_FILE, _read_text(folder / CONFIG_FILE), "the file")
    if not isinstance(config, dict) or config.get("architecture", "LeNet5") != "LeNet5":
        raise CheckpointError(f'{folder / CONFIG_FILE}: not the config of a LeNet5 (no "architecture": "LeNet5")')
    _check_version(folder / CONFIG_FILE, config.get("layout_version", 1))
    tensors, _ = _read_tensors(folder / WEIGHTS_FILE)
    fields = {name: config[name] for name in JSON_FIELDS if name in config and name != "config"}
    fields["config"] = {name: config[name] for name in _constructor_arguments() if name in config}
    return _checked(folder, tensors, fields)


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; export one with `python export.py --format safetensors`")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            return {name: file.get_tensor(name) for name in file.keys()}, file.metadata() or {}
    except Exception as err:  # the Rust reader's SafetensorError, or an OSError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: not a readable safetensors file: damaged, truncated or of another kind ({first})"
        ) from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: cannot be read ({err}); export it again") from None


MAX_JSON_DEPTH = 32  # what this project writes is a few levels deep; far more would overflow the stack later


def _parse_json(path: Path, text: str, what: str) -> Any:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:  # (RecursionError: nested about a thousand deep)
        reason = err if isinstance(err, json.JSONDecodeError) else "nested too deeply"
        raise CheckpointError(f"{path}: {what} is not valid JSON ({reason}); export it again") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{path}: {what} is nested more than {MAX_JSON_DEPTH} levels deep; export it again")
    return value


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value (a loop, not recursion: any depth)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        pending.extend((child, depth + 1) for child in children)
    return deepest


def _check_version(path: Path, version: Any) -> None:
    if str(version) != str(LAYOUT_VERSION):
        raise CheckpointError(f"{path}: written in layout {version!r}, and this version reads {LAYOUT_VERSION}")


def _constructor_arguments() -> list[str]:
    return list(inspect.signature(LeNet5).parameters)


def _constructor_defaults() -> dict[str, Any]:
    return {name: p.default for name, p in inspect.signature(LeNet5).parameters.items() if p.default is not p.empty}


def _checked(path: Path, tensors: dict[str, torch.Tensor], fields: dict[str, Any]) -> dict[str, Any]:
    """helper.load_checkpoint's shape, through its content checks, and the tensors against LeNet5's own."""
    checkpoint = {
        "architecture": "LeNet5",
        "state_dict": tensors,
        "epoch": 0,
        "normalization": dict(INPUT_NORMALIZATION),
        "metrics": {},
        "data": {},
        **fields,
    }
    _check_contents(path, checkpoint)
    try:
        expected = LeNet5(**checkpoint["config"]).state_dict()
    except (TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: its model config {checkpoint['config']} does not fit LeNet5 ({err})") from None
    misfits = [f"missing {name}" for name in expected if name not in tensors]
    misfits += [f"unexpected {name}" for name in tensors if name not in expected]
    misfits += [
        f"{name} is {tuple(tensors[name].shape)}, LeNet5's is {tuple(value.shape)}"
        for name, value in expected.items()
        if name in tensors and tensors[name].shape != value.shape
    ]
    if misfits:
        shown = "; ".join(misfits[:3]) + (f"; and {len(misfits) - 3} more" if len(misfits) > 3 else "")
        raise CheckpointError(f"{path}: its tensors do not fit LeNet5 ({shown})")
    return checkpoint


# --- writing ------------------------------------------------------------------------------------


def portable_fields(checkpoint: dict[str, Any], preprocessing: dict[str, Any]) -> dict[str, Any]:
    """What travels with the weights: model config, preprocessing contract, metrics, recipe, data, epoch."""
    train_state = checkpoint.get("train_state", {})
    recipe = train_state.get("recipe", checkpoint.get("metrics", {}).get("recipe"))
    if isinstance(recipe, dict):
        recipe = with_added_fields(recipe)
    fields = {
        "config": {**_constructor_defaults(), **checkpoint["config"]},  # every argument, for readers elsewhere
        "normalization": dict(checkpoint.get("normalization", INPUT_NORMALIZATION)),
        "preprocessing": preprocessing,
        "metrics": checkpoint.get("metrics", {}),
        "recipe": recipe,
        "data": checkpoint.get("data", {}),
        "epoch": checkpoint.get("epoch", 0),
    }
    return {name: value for name, value in fields.items() if value is not None}


def write_safetensors(checkpoint: dict[str, Any], path: Path, preprocessing: dict[str, Any]) -> None:
    from safetensors.torch import save

    # safetensors stores the standard layout: channels_last conv weights become plain contiguous ones
    tensors = {name: value.detach().cpu().contiguous() for name, value in checkpoint["state_dict"].items()}
    fields = portable_fields(checkpoint, preprocessing)
    metadata = {
        "format": "pt",  # what transformers and the Hub's viewer look for in a PyTorch safetensors file
        "architecture": "LeNet5",
        "layout_version": str(LAYOUT_VERSION),
        "torch_version": str(torch.__version__),
        **{name: _json(value) for name, value in fields.items()},
    }
    # Serialized in memory, then written by Python: a full disk is an OSError that atomic_output turns into
    # one line, where the Rust writer's SafetensorError would be a traceback.
    path.write_bytes(save(tensors, metadata=metadata))


def write_hub(checkpoint: dict[str, Any], folder: Path, preprocessing: dict[str, Any], name: str) -> None:
    """model.safetensors, config.json and README.md into an existing folder; the card calls it `name`."""
    with atomic_output(folder / WEIGHTS_FILE) as tmp:
        write_safetensors(checkpoint, tmp, preprocessing)
    fields = portable_fields(checkpoint, preprocessing)
    config = {
        **fields.pop("config"),  # top level: PyTorchModelHubMixin passes these to LeNet5(...)
        "architecture": "LeNet5",
        "layout_version": LAYOUT_VERSION,
        **fields,
    }
    with atomic_output(folder / CONFIG_FILE) as tmp:
        tmp.write_text(_json(config, indent=2) + "\n")
    with atomic_output(folder / CARD_FILE) as tmp:
        tmp.write_text(model_card(portable_fields(checkpoint, preprocessing), name))


def _json(value: Any, indent: int | None = None) -> str:
    """Strict JSON: NaN (which JSON lacks) becomes null."""
    return json.dumps(_without_nan(value), indent=indent, allow_nan=False, default=str)


def _without_nan(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nan(item) for item in value]
    return value


# --- export.py's --format safetensors and --format hub --------------------------------------------


def export_cli(
    weights: Path,
    fmt: str,
    out: Path | None,
    images_for: Callable[[], tuple[torch.Tensor, str]],
    contract: Callable[[dict[str, float], int], dict[str, Any]],
) -> None:
    """Check --out, export, prove the export gives the same logits, say what was written.

    images_for: (images N x 1 x 32 x 32, where they came from), read only once the flags are checked.
    contract: the preprocessing contract, from the checkpoint's normalization and number of classes.
    """
    out = check_out(fmt, out or default_out(fmt), weights)
    load_model(weights)  # a wrong --weights is said before any data is read
    images, source = images_for()
    export(weights, fmt, out, images, contract)
    size = sum(p.stat().st_size for p in ([out] if fmt == "safetensors" else [out / n for n in HUB_FILES]))
    written = f"{out}" if fmt == "safetensors" else f"{out}/ ({', '.join(HUB_FILES)})"
    print(f"wrote {written}, {size / 1024:.0f} KiB")
    print(f"loaded back with safetensors on {source}: logits identical to {weights}'s")
    if fmt == "hub":
        print(f"publish with (needs the network and `hf auth login`): {PUBLISH_COMMAND.format(folder=out)}")


def default_out(fmt: str) -> Path:
    return DEFAULT_CHECKPOINT.with_name("lenet5.safetensors" if fmt == "safetensors" else "lenet5-hub")


def check_out(fmt: str, out: Path, weights: Path) -> Path:
    """--out for `fmt`, checked before any work: a .safetensors file name, or a folder that is new,
    empty or a previous hub export (which is replaced; a folder holding anything else is refused)."""
    if resolve_output(out, "--out") == resolve_output(weights, "--weights"):
        raise UserError(f"--out {out} is the checkpoint being exported; choose another name")
    if fmt == "safetensors":
        if out.suffix.lower() != SUFFIX:
            raise UserError(f"--out {out}: a safetensors export is named *.safetensors, e.g. lenet5.safetensors")
        check_output_file(out, "--out", example="lenet5.safetensors")
        return out
    folder = resolve_output(out, "--out")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {out} is a file; a hub export is a folder: give a new folder's name")
    others = sorted(p.name for p in folder.iterdir() if p.name not in HUB_FILES) if folder.is_dir() else []
    if others:
        raise UserError(
            f"--out {out} holds other files than a hub export's ({', '.join(others[:3])}); give a new or empty folder"
        )
    created = [f for f in (folder, *folder.parents) if not f.exists()]  # the folders the check below creates
    check_output_file(folder / CONFIG_FILE, "--out")  # the folder can be created and written
    for unused in created:  # until an export succeeds: a failed one leaves no empty folder behind
        unused.rmdir()
    return out


def export(
    weights: Path,
    fmt: str,
    out: Path,
    images: torch.Tensor,
    contract: Callable[[dict[str, float], int], dict[str, Any]],
) -> None:
    """Write the export beside `out`, read it back, require the same logits as `weights`, then move it into place."""
    model, checkpoint = load_model(weights)
    normalization = checkpoint.get("normalization", INPUT_NORMALIZATION)
    preprocessing = contract(normalization, checkpoint["config"].get("num_classes", 10))
    if fmt == "safetensors":
        with atomic_output(out) as tmp:
            write_safetensors(checkpoint, tmp, preprocessing)
            check_identical(model, read_safetensors(tmp), images)
    else:
        with atomic_folder(out) as tmp:
            write_hub(checkpoint, tmp, preprocessing, out.name)
            check_identical(model, read_hub(tmp), images)


def check_identical(model: LeNet5, exported: dict[str, Any], images: torch.Tensor) -> None:
    """Same tensors, same code, same layout: the logits must be equal bit for bit, not merely close."""
    rebuilt = LeNet5(**exported["config"])
    rebuilt.load_state_dict(exported["state_dict"])
    rebuilt = place_model(rebuilt, "cpu").eval()
    with torch.inference_mode():
        expected, got = model(images), rebuilt(images)
    if not torch.equal(expected, got):
        raise UserError(
            f"the export's logits differ from the checkpoint's (by up to {(expected - got).abs().max().item():.2e}); "
            "nothing was written"
        )


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yield an empty folder beside `path`; when the block succeeds it takes `path`'s place (a previous
    folder there is moved aside first, then deleted), otherwise it is deleted. Never half a folder."""
    path = resolve_output(path, "--out")
    created = [f for f in path.parents if not f.exists()]  # removed again if the block fails
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    old = None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old)  # (an empty folder is replaced by a rename)
        os.replace(tmp, path)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not path.exists():
            os.replace(old, path)
        for unused in created:
            with contextlib.suppress(OSError):  # (one another process has written into meanwhile stays)
                unused.rmdir()
        if isinstance(err, UserError):  # (a full disk): name the folder asked for, not the temporary one
            raise type(err)(str(err).replace(str(tmp), str(path))) from None
        raise
    finally:
        if old is not None and old.exists():
            shutil.rmtree(old, ignore_errors=True)
