"""Saving and loading weights: the checkpoint, whatever its file format, written atomically, read back and
checked whole.

A Checkpoint is LeNet5's constructor arguments, its weights and what is known about them (metrics,
recipe, data, epoch), from any of three formats, each with one reader:
- a `.pt` that main.py writes (torch.save; read with weights_only=True, so a pickle that would run
  code is refused); it can also carry the training state that `main.py --resume` continues;
- a `.safetensors` file, or a Hugging Face Hub folder, that export.py writes (support/portable.py).
Whatever a file says is checked before anything is built from it: the model config's fields and
ranges, every tensor's name, dtype and shape against LeNet5's own, finite weights, the input
normalization, and the metadata's types and sizes; before that, a .pt's bytes against the checksums its
zip records (torch itself never looks at them). Anything off is one line (CheckpointError).
"""

import hashlib
import inspect
import pickletools
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.cli import UserError

import torch

from LeNet5 import INPUT_NORMALIZATION, LeNet5
from support import portable
from support.devices import place_model
from support.files import Kind, atomic_outputs, json_object, json_text, torch_bytes

CHECKPOINT_FORMAT = 3  # 2: train_state carries a data fingerprint and the full recipe; 3: and a digest
MAX_CLASSES = 1000  # a classifier of digits has 10 outputs; a config asking for millions is not a LeNet5 of ours


class CheckpointError(UserError):
    """A checkpoint that is missing, damaged, unsafe, non-finite or of another architecture."""


@dataclass(frozen=True)
class Checkpoint:
    """LeNet5 weights and what is known about them, read from any format and checked whole."""

    path: Path
    config: dict[str, Any]  # LeNet5's constructor arguments
    state_dict: dict[str, torch.Tensor]
    epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)  # test accuracy and the rest, as main.py measured them
    recipe: dict[str, Any] | None = None  # how it was trained, when recorded
    data: dict[str, Any] = field(default_factory=dict)  # the data's fingerprint and sizes
    train_state: dict[str, Any] | None = None  # a .pt from main.py: optimizer, schedule, generators, history
    digest: str | None = None  # seals train_state (resume.py checks it)
    kind: str = "pt"  # "pt", "safetensors" or "hub"

    def model(self, device: torch.device | str = "cpu") -> LeNet5:
        """LeNet5 rebuilt from the config, with these weights, on `device`, in eval mode."""
        model = LeNet5(**self.config)
        model.load_state_dict(self.state_dict)
        return place_model(model, device).eval()

    def sealed(self) -> bool:
        """Whether the training state is as saved: its digest matches what it holds."""
        fields = {"state_dict": self.state_dict, "train_state": self.train_state, "config": self.config}
        return self.digest is not None and self.digest == state_digest({**fields, "data": self.data})

    def training_state(self) -> dict[str, Any]:
        """The TrainState.state_dict() that save_checkpoint split up, whole again (weights included)."""
        return {"model": self.state_dict, **(self.train_state or {})}

    def portable_fields(self) -> dict[str, Any]:
        """What travels with the weights into another format: config (every argument), normalization, metrics,
        recipe, data, epoch."""
        fields = {
            "config": {**constructor_defaults(), **self.config},
            "normalization": dict(INPUT_NORMALIZATION),
            "metrics": self.metrics,
            "recipe": self.recipe,
            "data": self.data,
            "epoch": self.epoch,
        }
        return {name: value for name, value in fields.items() if value is not None}


# --- saving -------------------------------------------------------------------------------------


def save_checkpoint(
    path: Path,
    config: dict[str, Any],
    training: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    metrics_json: Path | None = None,
) -> None:
    """Save LeNet5 weights with everything needed to rebuild, check and (optionally) resume them.

    training: a train.TrainState.state_dict() (resumable), or just {"model": weights, "epoch": n}.
    Its weights are stored once, as the checkpoint's "state_dict"; the rest becomes "train_state",
    sealed by a digest that resume.py checks. metrics_json: also write the metrics there as JSON,
    replaced together with the checkpoint.
    """
    rest = {k: v for k, v in training.items() if k != "model"}
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "architecture": "LeNet5",
        "config": dict(config),
        "state_dict": {k: v.detach().cpu() for k, v in training["model"].items()},
        "epoch": training.get("epoch", 0),
        "normalization": dict(INPUT_NORMALIZATION),
        "metrics": metrics or {},
        "data": data or {},
        "torch_version": str(torch.__version__),
    }
    if set(rest) - {"epoch"}:
        checkpoint["train_state"] = rest
        checkpoint["digest"] = state_digest(checkpoint)
    contents = [torch_bytes(checkpoint)] + ([json_text(metrics or {}).encode()] if metrics_json else [])
    with atomic_outputs(path, *([metrics_json] if metrics_json else [])) as temps:
        for tmp, content in zip(temps, contents):
            tmp.write_bytes(content)


def state_digest(checkpoint: dict[str, Any]) -> str:
    """SHA-256 over what a resume depends on (weights, training state, model config, data fingerprint) of a
    checkpoint as it is saved: written at save time, compared on --resume, so a damaged or edited resume
    file is refused."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"<{tensor.dtype} {tuple(tensor.shape)}>".encode())
            digest.update(tensor.numpy().tobytes())
        elif isinstance(value, dict):
            digest.update(b"{")
            for key in sorted(value, key=repr):
                feed(key)
                feed(value[key])
            digest.update(b"}")
        elif isinstance(value, (list, tuple)):
            digest.update(b"[")
            for item in value:
                feed(item)
            digest.update(b"]")
        else:
            digest.update(f"{type(value).__name__}:{value!r};".encode())

    feed({key: checkpoint.get(key) for key in ("state_dict", "train_state", "config", "data")})
    return digest.hexdigest()


# --- loading: one reader per format, one check for all ------------------------------------------


def load_checkpoint(path: Path, resumable: bool = False, kind: str | None = None) -> Checkpoint:
    """Read a checkpoint of any format and check it whole; resumable: it must carry a training state.
    kind ("pt", "safetensors", "hub"): read it as that, whatever its name (default: by its name)."""
    path = Path(path)
    portable_kind = kind in ("safetensors", "hub") if kind else portable.claims(path)
    checkpoint = _read_portable(path) if portable_kind else _read_pt(path)
    _check_whole(checkpoint)
    if resumable and checkpoint.train_state is None:
        what = "an export holds the weights only, no" if checkpoint.kind != "pt" else "it holds no"
        raise CheckpointError(
            f"{path}: {what} training state of this version to resume from (it can still be evaluated); start a "
            "new run without --resume"
        )
    return checkpoint


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[LeNet5, Checkpoint]:
    """Rebuild LeNet5 from a checkpoint of any format; returns (model in eval mode, checkpoint)."""
    checkpoint = load_checkpoint(path)
    return checkpoint.model(device), checkpoint


def _read_pt(path: Path) -> Checkpoint:
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; pass the checkpoint file, e.g. {path / 'lenet5.pt'}")
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint; train one with `python main.py`, or give the path of one")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file (a device, a pipe or a socket); pass a checkpoint file")
    damaged = _failing_member(path)
    if damaged:
        raise CheckpointError(f"{path} is damaged ({damaged} fails its checksum); replace it with a fresh copy")
    try:
        raw = _torch_load(path)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable checkpoint: {_why_unreadable(path, err)}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("state_dict"), dict) or "config" not in raw:
        raise CheckpointError(f"{path}: not a checkpoint of this project (no state_dict/config); retrain it")
    version = raw.get("format", 1)
    if type(version) is not int:
        raise CheckpointError(f"{path}: its format {version!r} is not a version number; retrain it")
    if version > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: written by a newer version of this project (format {version})")
    if raw.get("architecture", "LeNet5") != "LeNet5":
        raise CheckpointError(f"{path}: holds a {raw['architecture']!r}, not a LeNet5")
    if raw.get("normalization", INPUT_NORMALIZATION) != INPUT_NORMALIZATION:
        raise CheckpointError(
            f"{path}: trained on inputs normalized as {raw['normalization']}, but this code feeds "
            f"{INPUT_NORMALIZATION}; its predictions would be wrong, so retrain it"
        )
    train_state = raw.get("train_state") if version == CHECKPOINT_FORMAT else None
    metrics = raw.get("metrics", {})
    recipe = train_state.get("recipe") if isinstance(train_state, dict) else None
    if recipe is None and isinstance(metrics, dict):
        recipe = metrics.get("recipe")
    return Checkpoint(path, raw["config"], raw["state_dict"], raw.get("epoch", 0), metrics, recipe,
                      raw.get("data", {}), train_state, raw.get("digest"), "pt")  # fmt: skip


def _torch_load(path: Path) -> Any:
    with warnings.catch_warnings():  # torch warns about pickle protocols before refusing: one line is enough
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


def _failing_member(path: Path) -> str | None:
    """The first member of a torch.save zip whose bytes do not match the CRC-32 the zip records for them, else
    None. torch.load never compares them: weights changed in place, or one flipped bit, loaded and evaluated as
    if nothing had happened. One read of the file; a file that is not a readable zip is for torch.load to name."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0 and info.file_size:  # torch.save with compute_crc32 off records none
                    continue
                try:
                    with archive.open(info) as member:
                        while member.read(1 << 20):
                            pass
                except (zipfile.BadZipFile, zlib.error, EOFError):
                    return info.filename.split("/", 1)[-1]  # data/3, in the archive's own folder
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, ValueError):
        return None
    return None


def is_own_checkpoint(path: Path) -> bool:
    """Whether `path` is a .pt that this program wrote: a torch.save zip of a dict with a checkpoint's keys. Its
    weights are not judged: a run may replace its own damaged or diverged checkpoint, never someone else's file."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        raw = _torch_load(path)
    except Exception:
        return False
    return isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict) and "config" in raw


def is_own_metrics(path: Path) -> bool:
    """Whether `path` is the metrics .json that save_checkpoint writes beside a checkpoint (main.py's metrics)."""
    metrics = json_object(path)
    return metrics is not None and {"test_accuracy", "epochs"} <= metrics.keys()


CHECKPOINT = Kind("a checkpoint", is_own_checkpoint)  # what main.py writes, and its .resume.pt
METRICS = Kind("a metrics file", is_own_metrics)  # the .json beside it


def _read_portable(path: Path) -> Checkpoint:
    try:
        tensors, fields = portable.read(path, list(inspect.signature(LeNet5).parameters))
    except portable.LayoutError as err:
        raise CheckpointError(f"{path}: {err}") from None
    if fields.get("normalization", INPUT_NORMALIZATION) != INPUT_NORMALIZATION:
        raise CheckpointError(f"{path}: made for inputs normalized as {fields['normalization']}; export it again")
    kind = "hub" if path.is_dir() else "safetensors"
    return Checkpoint(path, fields["config"], tensors, fields.get("epoch", 0), fields.get("metrics", {}),
                      fields.get("recipe"), fields.get("data", {}), kind=kind)  # fmt: skip


def constructor_defaults() -> dict[str, Any]:
    return {name: p.default for name, p in inspect.signature(LeNet5).parameters.items() if p.default is not p.empty}


def _check_whole(checkpoint: Checkpoint) -> None:
    """Everything the file says, before anything is built from it: one line naming the first fault."""
    problem = _config_problem(checkpoint.config) or _tensor_problem(checkpoint) or _metadata_problem(checkpoint)
    if problem:
        raise CheckpointError(f"{checkpoint.path}: {problem}")


def _config_problem(config: Any) -> str | None:
    """The model config's fields and ranges, checked before a model is built from it (a config asking for
    20 million classes would take gigabytes)."""
    defaults = constructor_defaults()
    if not isinstance(config, dict) or not config.keys() <= defaults.keys():
        known = ", ".join(defaults)
        return f"its model config {_short(config)} is not LeNet5's (arguments: {known}); retrain or export it again"
    for name, value in config.items():
        if type(value) is not type(defaults[name]):
            return f"its model config's {name} is {_short(value)}, where LeNet5 takes {type(defaults[name]).__name__}"
    classes = config.get("num_classes", defaults["num_classes"])
    if not 2 <= classes <= MAX_CLASSES:
        return f"its model config asks for {classes} classes; a LeNet5 here has 2 to {MAX_CLASSES} (MNIST: 10)"
    return None


def _tensor_problem(checkpoint: Checkpoint) -> str | None:
    """Every tensor's name, dtype and shape against LeNet5's own (built on the meta device: no memory), and finite."""
    tensors = checkpoint.state_dict
    if not all(isinstance(name, str) and isinstance(value, torch.Tensor) for name, value in tensors.items()):
        return "its state_dict holds something other than named tensors; retrain it"
    with torch.device("meta"):
        expected = LeNet5(**checkpoint.config).state_dict()
    misfits = [f"missing {name}" for name in expected if name not in tensors]
    misfits += [f"unexpected {name}" for name in tensors if name not in expected]
    for name, like in expected.items():
        if name in tensors and (tensors[name].shape, tensors[name].dtype) != (like.shape, like.dtype):
            got = tensors[name]
            misfits.append(f"{name} is {got.dtype} {tuple(got.shape)}, LeNet5's is {like.dtype} {tuple(like.shape)}")
    if misfits:
        shown = "; ".join(misfits[:3]) + (f"; and {len(misfits) - 3} more" if len(misfits) > 3 else "")
        return f"its tensors do not fit LeNet5 ({shown})"
    broken = [name for name, value in tensors.items() if not torch.isfinite(value).all()]
    if broken:
        return f"holds NaN or infinite weights ({', '.join(broken)}): the run that wrote it diverged; retrain it"
    return _buffer_problem(checkpoint)


def _buffer_problem(checkpoint: Checkpoint) -> str | None:
    """LeNet5's buffers are constants its config implies (c3.mask: LeCun's C3 table; output.centres: the 1998
    network's digit bitmaps), never trained: a file whose buffers differ was edited or damaged (a C3 mask of
    ones would silently turn the masked weights on)."""
    with torch.random.fork_rng(devices=[]):  # building the model draws its initial weights: leave the seed alone
        expected = dict(LeNet5(**checkpoint.config).named_buffers())
    changed = [name for name, like in expected.items() if not torch.equal(checkpoint.state_dict[name], like)]
    if changed:
        return (
            f"its {' and '.join(changed)} (constants that its model config implies, never trained) differ from "
            "LeNet5's: the file was edited or damaged; retrain or export it again"
        )
    return None


MAX_TEXT = 200  # characters of any one string in the metadata (a recipe's name, a device): more is not ours


def _metadata_problem(checkpoint: Checkpoint) -> str | None:
    """The metadata that is shown or reused (metrics, recipe, data, epoch): the types this project writes."""
    epoch, metrics, recipe, data = checkpoint.epoch, checkpoint.metrics, checkpoint.recipe, checkpoint.data
    if type(epoch) is not int or epoch < 0:
        return f"its epoch {_short(epoch)} is not a count"
    if not isinstance(metrics, dict) or not isinstance(data, dict) or not isinstance(recipe, dict | None):
        return "its metrics, data or recipe is not a JSON object"
    if len(json_text({"m": metrics, "r": recipe, "d": data}, indent=None)) > portable.MAX_METADATA_BYTES:
        return f"its metadata is larger than {portable.MAX_METADATA_BYTES:,} bytes"
    accuracy = metrics.get("test_accuracy")
    if accuracy is not None and not (_is_number(accuracy) and 0 <= accuracy <= 1):
        return f"its test_accuracy {_short(accuracy)} is not a fraction between 0 and 1"
    per_class = metrics.get("per_class_accuracy")
    if per_class is not None and not (
        isinstance(per_class, list) and all(a is None or (_is_number(a) and 0 <= a <= 1) for a in per_class)
    ):
        return "its per_class_accuracy is not a list of fractions"
    for name, value in {**(recipe or {}), **data}.items():
        if not isinstance(value, bool | int | float | str | None) or len(str(value)) > MAX_TEXT:
            return f"its recipe or data holds {name!r} = {_short(value)}, not a short value"
    return None


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _why_unreadable(path: Path, err: Exception) -> str:
    """Tell a pickle that would run code (refused on purpose) from a damaged or foreign file."""
    foreign = _foreign_globals(path)
    if foreign or "Unsupported global" in str(err):
        named = f" ({', '.join(sorted(foreign))})" if foreign else ""
        return f"it contains Python objects that would run code on load{named}; refused for safety"
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "Weights only load failed" in first or "invalid load key" in first or isinstance(err, KeyError):
        first = "the bytes are not a torch.save file"
    elif path.read_bytes()[:2] == b"PK" and not zipfile.is_zipfile(path):
        first = "an incomplete zip archive"
    return f"the file is damaged, truncated or of another kind ({first})"


def _foreign_globals(path: Path) -> set[str]:
    """The callables a well-formed pickle (plain, or inside torch's zip) imports from outside torch."""
    try:
        raw = path.read_bytes()
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                raw = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
        strings, names = [], set()
        with warnings.catch_warnings():  # pickletools warns about escapes in random bytes
            warnings.simplefilter("ignore")
            for op, arg, _ in pickletools.genops(raw):
                if op.name == "GLOBAL":
                    names.add(".".join(arg.split()))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.add(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # not a well-formed pickle: damaged or random bytes
        return set()
    return {n for n in names if n.split(".")[0] not in {"torch", "collections"}}
