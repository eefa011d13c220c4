"""The two portable layouts of LeNet5 weights, in both directions, at the level of tensors and fields:

- one `.safetensors` file: the tensors and, as its metadata (strings), the fields as JSON: model
  config, normalization, preprocessing contract, metrics, recipe, data, epoch, and a SHA-256 of the
  tensors (the format has no checksum of its own), compared on reading. No pickle: reading it never
  runs code, and any language reads it.
- the Hugging Face Hub layout, a folder with model.safetensors (that same file), config.json
  (LeNet5's constructor arguments at the top level, as huggingface_hub's PyTorchModelHubMixin reads
  them, plus the other fields) and a README.md model card.

helper.load_checkpoint turns what is read here into a Checkpoint and checks it whole; export.py
writes through extras/exports.py. What is wrong with a file is a LayoutError, without the path
(the caller names it).
"""

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from support.files import file_sha256, json_text

SUFFIX = ".safetensors"
WEIGHTS_FILE, CONFIG_FILE, CARD_FILE = "model.safetensors", "config.json", "README.md"
HUB_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)
LAYOUT_VERSION = 1  # of the metadata and config.json written here
FIELDS = ("config", "normalization", "preprocessing", "metrics", "recipe", "data", "epoch")
MAX_JSON_DEPTH = 32  # what this project writes is a few levels deep; far more would overflow the stack later
MAX_METADATA_BYTES = 1 << 20  # a model's description, not a data set: what this project writes is a few KB
HUB_RECORD = "export_sha256"  # in a hub folder's config.json: the SHA-256 of each of its files, as exported
DIGEST_KEY = "tensors_sha256"  # the metadata entry holding tensors_digest() (safetensors itself has no checksum)


class LayoutError(Exception):
    """The file or folder is not in the layout written here (damaged, foreign, or of another version)."""


def claims(path: Path) -> bool:
    """Whether `path` is in one of these layouts rather than a torch.save file: a .safetensors file, or a
    folder with model.safetensors or config.json in it (an incomplete hub folder is then refused by name)."""
    path = Path(path)
    if path.is_dir():
        return (path / WEIGHTS_FILE).exists() or (path / CONFIG_FILE).exists()
    return path.suffix.lower() == SUFFIX


def written_here(path: Path) -> bool:
    """Whether `path` is a .safetensors file that this project wrote (its metadata names LeNet5), which an export
    may replace. Only the header is read: a large file of another model's costs nothing to tell apart."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            metadata = file.metadata() or {}
    except Exception:  # the Rust reader's SafetensorError, or an OSError: not one of these files
        return False
    return metadata.get("architecture") == "LeNet5" and "config" in metadata


def read(path: Path, constructor_arguments: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, fields) of a .safetensors file or a hub folder; the fields' values are parsed, not yet checked."""
    path = Path(path)
    return read_hub(path, constructor_arguments) if path.is_dir() else read_safetensors(path)


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The file's tensors, and the fields its metadata holds (which a foreign file lacks)."""
    tensors, metadata = _read_tensors(path)
    if metadata.get("architecture") != "LeNet5" or "config" not in metadata:
        raise LayoutError(
            "a safetensors file without this project's LeNet5 metadata (another model's, or written by other "
            "code); export one with `python export.py --format safetensors`"
        )
    _check_version(metadata.get("layout_version", "1"))
    return tensors, {name: parse_json(metadata[name], f"its metadata {name!r}") for name in FIELDS if name in metadata}


def read_hub(folder: Path, constructor_arguments: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """config.json says what the model is (as for huggingface_hub); model.safetensors holds the weights."""
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise LayoutError(f"a hub folder needs {name}, and it has none; export it again")
    config = parse_json(_read_text(folder / CONFIG_FILE), CONFIG_FILE)
    if not isinstance(config, dict) or config.get("architecture", "LeNet5") != "LeNet5":
        raise LayoutError(f'its {CONFIG_FILE} is not the config of a LeNet5 (no "architecture": "LeNet5")')
    _check_version(config.get("layout_version", 1))
    tensors, _ = _read_tensors(folder / WEIGHTS_FILE)  # (damaged: its own digest says so first)
    record = config.get(HUB_RECORD)
    exported = record.get(WEIGHTS_FILE) if isinstance(record, dict) else None
    if isinstance(exported, str) and exported != file_sha256(folder / WEIGHTS_FILE):  # (a folder without: as ever)
        raise LayoutError(
            f"its {WEIGHTS_FILE} is not the one its {CONFIG_FILE} was exported with (replaced or changed), so the "
            "folder's config and model card do not describe these weights; export it again"
        )
    fields = {name: config[name] for name in FIELDS if name in config and name != "config"}
    fields["config"] = {name: config[name] for name in constructor_arguments if name in config}
    return tensors, fields


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise LayoutError("no such file; export one with `python export.py --format safetensors`")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            metadata = file.metadata() or {}
            if sum(len(key) + len(value) for key, value in metadata.items()) > MAX_METADATA_BYTES:
                raise LayoutError(f"its metadata is larger than {MAX_METADATA_BYTES:,} bytes; export it again")
            tensors = {name: file.get_tensor(name) for name in file.keys()}
    except LayoutError:
        raise
    except Exception as err:  # the Rust reader's SafetensorError, or an OSError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LayoutError(f"not a readable safetensors file: damaged, truncated or of another kind ({first})") from None
    if DIGEST_KEY in metadata and metadata[DIGEST_KEY] != tensors_digest(tensors):  # (a file without: checked as ever)
        raise LayoutError(
            "its tensors do not match the digest it was written with: the file is damaged; export it again"
        )
    return tensors, metadata


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors in sorted name order, each one's name, dtype, shape and raw bytes: what the file
    holds, whatever its layout. Written into the metadata by safetensors_bytes, compared when the file is read."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # (bytes: any dtype, bfloat16 too)
    return digest.hexdigest()


def _read_text(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_METADATA_BYTES:
            raise LayoutError(f"its {path.name} is larger than {MAX_METADATA_BYTES:,} bytes; export it again")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LayoutError(f"its {path.name} cannot be read ({err}); export it again") from None


def parse_json(text: str, what: str) -> Any:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:  # (RecursionError: nested about a thousand deep)
        reason = err if isinstance(err, json.JSONDecodeError) else "nested too deeply"
        raise LayoutError(f"{what} is not valid JSON ({reason}); export it again") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise LayoutError(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep; export it again")
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


def _check_version(version: Any) -> None:
    if str(version) != str(LAYOUT_VERSION):
        raise LayoutError(f"written in layout {version!r}, and this version reads {LAYOUT_VERSION}")


# --- writing ------------------------------------------------------------------------------------


def safetensors_bytes(tensors: dict[str, torch.Tensor], fields: dict[str, Any]) -> bytes:
    """The .safetensors file: the tensors in the standard (contiguous) layout, the fields as JSON metadata.
    Serialized in memory, so that a full disk fails in Python's own write (one line), not in the Rust writer."""
    from safetensors.torch import save

    tensors = {name: value.detach().cpu().contiguous() for name, value in tensors.items()}
    metadata = {
        "format": "pt",  # what transformers and the Hub's viewer look for in a PyTorch safetensors file
        "architecture": "LeNet5",
        "layout_version": str(LAYOUT_VERSION),
        "torch_version": str(torch.__version__),
        DIGEST_KEY: tensors_digest(tensors),
        **{name: json_text(value, indent=None) for name, value in fields.items()},
    }
    return save(tensors, metadata=metadata)


def hub_config(fields: dict[str, Any]) -> dict[str, Any]:
    """config.json: the constructor arguments at the top level (PyTorchModelHubMixin passes them to LeNet5(...))."""
    rest = dict(fields)
    return {**rest.pop("config"), "architecture": "LeNet5", "layout_version": LAYOUT_VERSION, **rest}
