"""The drawing demo's page (Gradio): draw a digit or upload a picture, and see what LeNet-5 reads, the 28x28 it
receives and its C1 and C3 feature maps, each panel with a line saying what it shows. app.py serves it.

Every picture the page shows is an <img> with alt text, inside the page's own HTML as a data: URL: nothing is
written to Gradio's cache per prediction, so the cache does not grow however long the page runs. Every outcome
has its own words (nothing to read yet, a picture that cannot be read and why, no digit in it and why, what was
read); the answer is announced to screen readers (an aria-live region).
"""

import base64
import contextlib
import hashlib
import html
import io
import json
import math
import os
import stat
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from data import preprocess
from eval import classify
from extras.digits import IMAGE_SUFFIXES, ImageProblem, NoDigit, Source, load_grayscale, read_grayscale, to_mnist_digit
from helper import Checkpoint, CheckpointError, load_checkpoint
from support import portable
from support.devices import place_batch
from support.figures import viridis

IDLE = "Draw a digit on the canvas, or upload a picture of one."
CANVAS = 400  # canvas pixels per side; the digit is cropped and scaled to 20 px anyway
BRUSH = 16  # brush radius in canvas pixels: strokes about as thick, relative to the digit, as MNIST's pen
PAGE_MAX_PIXELS = 16_000_000  # an upload decoding to more is refused unread (a JPEG decodes at 1/2 to 1/8 size)
SHOWN_SIDE = 240  # the longer side, in pixels, at which an uploaded picture is shown back

EXPLAIN = {
    "answer": "The network's three most likely digits, with the probabilities its softmax gives them.",
    "digit": "Your digit as the network receives it: cropped to the ink, its longer side scaled to 20 pixels, "
    "centred in a 28x28 square, light ink on black, as MNIST's digits were made. LeNet-5 pads it to 32x32.",
    "c1": "C1: six 5x5 filters slide over the padded 32x32 input. Each 28x28 map shows where its filter's "
    "pattern is found: yellow +1, purple -1 (tanh's range).",
    "c3": "C3: sixteen 5x5 filters over the six C1 maps, averaged down to 14x14; each reads only the C1 maps that "
    "LeCun's connection table gives it. Each map is 10x10.",
}

# Gradio shows the Sketchpad with no tool chosen, and again after "clear" ("select the draw tool to start"):
# whenever that hint shows, choose the brush for the visitor (a click before the canvas is ready is lost, so
# keep checking rather than clicking once). The same pass names what Gradio leaves unnamed for screen readers
# (the drawing canvas; the example buttons, which hold only a picture) and makes the answer a live region, so
# that each new answer is announced.
PAGE_SCRIPT = """() => setInterval(() => {
  if (document.querySelector("#canvas .empty")) document.querySelector("#canvas button[aria-label=Brush]")?.click();
  for (const c of document.querySelectorAll("#canvas canvas:not([aria-label])")) {
    c.setAttribute("role", "img");
    c.setAttribute("aria-label", "Drawing canvas: draw one digit here with the mouse or a finger");
  }
  document.querySelectorAll("#examples .gallery-item:not([aria-label])").forEach((button, i) =>
    button.setAttribute("aria-label", "Example picture " + (EXAMPLES[i] || i + 1) + ": read it"));
  const status = document.querySelector("#status");
  if (status && !status.hasAttribute("aria-live")) {
    status.setAttribute("role", "status");
    status.setAttribute("aria-live", "polite");
  }
}, 250)"""


def page_script(example_names: list[str]) -> str:
    return PAGE_SCRIPT.replace("EXAMPLES[i]", f"{json.dumps(example_names)}[i]")


CSS = """
#canvas { max-width: 100%; border: 2px solid #6b7280; border-radius: 8px; }
#canvas .pixi-target canvas, #canvas canvas { background: #ffffff; }
.picture figure { margin: 0; }
.picture img { image-rendering: pixelated; max-width: 100%; height: auto; border: 1px solid #9ca3af; }
.picture figcaption, .explain { font-size: 0.85em; color: #374151; margin-top: 4px; }
#status p { font-size: 1.15em; margin: 0; }
#legend { display: flex; align-items: center; gap: 6px; font-size: 0.85em; flex-wrap: wrap; }
#legend .bar { width: 160px; height: 12px; border: 1px solid #6b7280; }
@media (max-width: 480px) {
  #canvas { height: 370px !important; }
  #canvas .pixi-target, #canvas .pixi-target-crop { left: 48px; width: calc(100% - 48px); }
}
"""
PHONE_HEAD = "<style>@media (max-width: 480px) { .gradio-container .main.app { padding: 8px; } }</style>"


def gradio():
    """Gradio, imported on first use: it takes seconds, which --help and the error paths do not need."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: this is a local demo
    import gradio as gr

    return gr


# --- the checkpoints offered ----------------------------------------------------------------------


@dataclass(frozen=True)
class Offered:
    key: str  # what the picker sends: the checkpoint's path as shown
    label: str  # what the picker shows: recipe, test accuracy, file
    model: nn.Module


MAX_CHECKPOINT_BYTES = 50 * 2**20  # a LeNet-5 checkpoint, training state and all, is well under 1 MB


def candidates(folder: Path) -> list[Path]:
    """The checkpoints of a folder, in the picker's order: .pt files, .safetensors files, hub folders. Whatever is
    named as a checkpoint counts, even when it is not a file (a pipe, a folder, a broken link): the page then says
    why it is not offered, rather than leaving it out in silence."""
    if not folder.is_dir():
        return []
    entries = sorted(folder.iterdir())
    pts = [p for p in entries if p.suffix == ".pt" and not p.name.endswith(".resume.pt")]
    exports = [p for p in entries if p.suffix == portable.SUFFIX]
    hubs = [p for p in entries if p.suffix not in (".pt", portable.SUFFIX) and p.is_dir() and portable.claims(p)]
    return pts + exports + hubs


def not_a_checkpoint(path: Path) -> str | None:
    """Why `path` cannot be a checkpoint, found without reading it (the reader would read a 20 GB file whole, and
    wait for ever on a pipe); None when it may be one. A .pt that torch.save wrote is a zip archive."""
    try:
        info = path.stat()
    except OSError as err:  # a broken or looping link, no permission
        return f"cannot be read ({err.strerror or err})"
    if stat.S_ISDIR(info.st_mode):
        return None if portable.claims(path) and path.suffix != ".pt" else f"a folder, not a {path.suffix} file"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a pipe, a device or a socket)"
    if info.st_size > MAX_CHECKPOINT_BYTES:
        return (f"not a checkpoint ({info.st_size / 2**20:,.0f} MB, where a LeNet-5 checkpoint is well under "
                f"{MAX_CHECKPOINT_BYTES // 2**20} MB)")  # fmt: skip
    if path.suffix == ".pt" and not zipfile.is_zipfile(path):
        return "not a readable checkpoint: the file is damaged, truncated or of another kind (not a zip archive)"
    return None


def offered_checkpoints(weights: Path, folder: Path, device: torch.device | str, shown_as) -> list[Offered]:
    """--weights first (a broken one is a UserError), then every other checkpoint in `folder` that loads, each
    labelled with its recipe and test accuracy, and the same weights once (an export of a .pt is the .pt)."""
    offered, seen = [], set()
    for n, path in enumerate([weights, *candidates(folder)]):
        try:
            # (--weights that is no file at all: the reader's own words, "no such checkpoint; train one ...")
            if (n > 0 or Path(path).is_file()) and (problem := not_a_checkpoint(Path(path))):
                raise CheckpointError(f"{path}: {problem}")
            checkpoint = load_checkpoint(path)
        except CheckpointError as err:
            if n == 0:
                raise
            print(f"not offered on the page: {err}")
            continue
        fingerprint = weights_digest(checkpoint)
        if fingerprint not in seen:
            seen.add(fingerprint)
            key = shown_as(path)
            offered.append(Offered(key, f"{describe(checkpoint)} · {key}", checkpoint.model(device)))
    return offered


def weights_digest(checkpoint: Checkpoint) -> str:
    digest = hashlib.sha256()
    for name in sorted(checkpoint.state_dict):
        tensor = checkpoint.state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode() + str(tensor.dtype).encode() + tensor.numpy().tobytes())
    return digest.hexdigest()


def describe(checkpoint: Checkpoint) -> str:
    """'default recipe, 99.16 % test accuracy', from what the checkpoint recorded (checked types)."""
    name = (checkpoint.recipe or {}).get("name")
    recipe = f"{name} recipe" if isinstance(name, str) else "recipe not recorded"
    accuracy = checkpoint.metrics.get("test_accuracy")
    tested = f"{100 * accuracy:.2f} % test accuracy" if isinstance(accuracy, int | float) else "no test accuracy"
    return f"{recipe}, {tested}"


# --- what the page shows --------------------------------------------------------------------------


def percent(probability: float) -> str:
    """A probability as the page writes it everywhere: whole percents, rounded half up, as gr.Label's bars do."""
    return f"{math.floor(probability * 100 + 0.5)}%"


def png_data_url(pixels: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def picture(pixels: np.ndarray, alt: str, caption: str, width: int) -> str:
    """An <img> (alt text for screen readers) with its caption, its pixels inside the page."""
    return (
        f'<figure><img src="{png_data_url(pixels)}" alt="{html.escape(alt)}" width="{width}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def tile(maps: torch.Tensor, columns: int, zoom: int, gap: int = 2) -> np.ndarray:
    """K x H x W activations in -1..1 -> one RGB uint8 grid, each map enlarged `zoom` times (yellow +1, purple -1)."""
    count, height, width = maps.shape
    rows = -(-count // columns)
    cell_h, cell_w = height * zoom + gap, width * zoom + gap
    grid = torch.full((rows * cell_h - gap, columns * cell_w - gap), float("nan"))  # NaN: the white gaps
    big = maps.float().cpu().repeat_interleave(zoom, 1).repeat_interleave(zoom, 2)
    for k in range(count):
        row, col = divmod(k, columns)
        grid[row * cell_h : row * cell_h + height * zoom, col * cell_w : col * cell_w + width * zoom] = big[k]
    colours = viridis().with_extremes(bad="white")(((grid + 1) / 2).numpy())
    return (colours[..., :3] * 255).round().astype(np.uint8)


def legend() -> str:
    """HTML: the feature maps' colour scale, -1 (purple) to +1 (yellow), the range of tanh."""
    stops = ", ".join("#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in viridis()(i / 8)[:3])) for i in range(9))
    bar = f'<span class="bar" style="background: linear-gradient(to right, {stops})" aria-hidden="true"></span>'
    return f'<div id="legend">colour scale of the maps: <span>-1</span>{bar}<span>+1</span> (white: gaps)</div>'


def shown_back(grey: torch.Tensor) -> str:
    """The uploaded picture, as it was read (grey, upright), at most SHOWN_SIDE pixels on its longer side."""
    scale = min(1.0, SHOWN_SIDE / max(grey.shape))
    size = [max(1, round(side * scale)) for side in grey.shape]
    small = torch.nn.functional.interpolate(grey[None, None], size=size, mode="area")[0, 0]
    pixels = small.clamp(0, 255).round().to(torch.uint8).numpy()
    return picture(pixels, "your picture, as it was read", "Your picture, as it was read (in grey, upright).", size[1])


Outputs = tuple[dict[str, float] | None, str, str, str, str, str]  # top 3, status, 28x28, C1, C3, your picture


def message(text: str, shown: str = "") -> Outputs:
    """An outcome without a digit: its own words, nothing else shown (but the upload, when there is one)."""
    return None, f"<p>{html.escape(text)}</p>", "", "", "", shown


def sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def idle() -> Outputs:
    return message(IDLE)


@torch.inference_mode()
def look(model: nn.Module, grey: torch.Tensor, shown: str = "") -> Outputs:
    """H x W grey -> top 3 for gr.Label, the status line, and the 28x28, C1 and C3 pictures (HTML)."""
    try:
        digit = to_mnist_digit(grey)
    except ImageProblem as problem:  # "no digit found (the image is blank or has no contrast)"
        return message(sentence(str(problem)), shown)
    result = classify(model, digit[None], topk=3)[0]
    maps = model.feature_maps(place_batch(preprocess(digit[None]), next(model.parameters()).device))
    top = {str(t["digit"]): t["probability"] for t in result["topk"]}
    read = f"LeNet-5 reads {result['prediction']} ({percent(result['probability'])})."
    c1 = picture(tile(maps["C1"][0], columns=3, zoom=3), "the six C1 feature maps", EXPLAIN["c1"], 3 * 84 + 4)
    c3 = picture(tile(maps["C3"][0], columns=4, zoom=6), "the sixteen C3 feature maps", EXPLAIN["c3"], 4 * 60 + 6)
    seen = picture(digit.numpy(), f"the 28x28 digit the network receives, read as {result['prediction']}",
                   EXPLAIN["digit"], 140)  # fmt: skip
    return top, f"<p><strong>{html.escape(read)}</strong></p>", seen, c1, c3, shown


def cannot_read(problem: ImageProblem) -> Outputs:
    """The page's words for a picture it cannot read ("not an image (...)", "too large: ...", "a damaged ..."), or
    for one that holds no digit ("no digit found (the picture is only 1 x 1 pixels)")."""
    if isinstance(problem, NoDigit):
        return message(sentence(str(problem)))
    return message(f"Your picture cannot be read: {problem}.")


def read_upload(model: nn.Module, path: str | None) -> Outputs:
    """An uploaded file, opened by the page itself (not Gradio), with the page's smaller pixel limit."""
    if path is None:
        return idle()
    try:
        grey = load_grayscale(Path(path), max_pixels=PAGE_MAX_PIXELS)
    except ImageProblem as problem:
        return cannot_read(problem)
    return look(model, grey, shown_back(grey))


def canvas_grey(editor: dict[str, Any] | None) -> torch.Tensor | None:
    """The Sketchpad's composite (strokes on a transparent canvas: a file, or its bytes; see canvas_component) as
    grey, through digits.py like any upload, with the page's pixel limit; an ImageProblem when it cannot be read."""
    composite: Source | None = (editor or {}).get("composite")
    return None if composite is None else read_grayscale(composite, max_pixels=PAGE_MAX_PIXELS)


def read_by_the_page(canvas):
    """`canvas` (a gr.Sketchpad), its drawing passed to the page's handler unread: Gradio would decode it first,
    whatever it is, and a caller of the API can send anything as the drawing (a text file, a 30000 x 30000
    picture); the page reads it itself (canvas_grey) and answers in its own words, not with Gradio's traceback.
    (Set on the instance: Gradio writes a .pyi beside any module that defines a subclass of a component.)"""

    def preprocess(payload) -> dict[str, Any] | None:
        """{"composite": the drawing's file or bytes, or None}."""
        if payload is None:
            return None
        composite = payload.composite
        if payload.id is not None:  # the browser sends the drawing ahead, as blobs (ImageEditor.accept_blobs)
            stored = canvas.blob_storage.pop(payload.id, None)
            composite = None if stored is None else stored.composite
        if composite is not None and not isinstance(composite, bytes):
            composite = Path(composite.path)
        return {"background": None, "layers": [], "composite": composite}

    canvas.preprocess = preprocess
    return canvas


def handlers(models: dict[str, nn.Module]):
    """The page's events. One input at a time: a drawing clears the upload and an upload clears the canvas (the
    last output of each); another checkpoint re-reads whichever is there."""

    def from_upload(path: str | None, name: str) -> tuple:
        return *read_upload(models[name], path), None, path

    def from_canvas(editor: dict[str, Any] | None, path: str | None, name: str) -> tuple:
        try:
            grey = canvas_grey(editor)
        except ImageProblem as problem:
            return *cannot_read(problem), None
        blank = grey is None or grey.min() == grey.max()
        if path is not None and blank:  # cleared for that upload: keep it
            return (gradio().skip(),) * 7
        return *(idle() if blank else look(models[name], grey)), None

    def from_either(editor: dict[str, Any] | None, path: str | None, name: str) -> Outputs:
        if path is not None:
            return read_upload(models[name], path)
        try:
            grey = canvas_grey(editor)
        except ImageProblem as problem:
            return cannot_read(problem)
        return idle() if grey is None or grey.min() == grey.max() else look(models[name], grey)

    return from_upload, from_canvas, from_either


def example_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def keep_uploads_for(demo, seconds: float) -> threading.Event:
    """Delete, every `seconds`, the files this page's Gradio app stored (visitors' uploads, drawings, examples)
    that are older than that, so that they never pile up; returns the Event that stops it. (Gradio's own
    delete_cache runs from its server's lifespan, which a server started with prevent_thread_lock never enters:
    this runs the same deletion from a thread of its own.)"""
    from gradio.route_utils import delete_files_created_by_app

    stop = threading.Event()

    def clean() -> None:
        while not stop.wait(seconds):
            with contextlib.suppress(Exception):  # an optional chore: the page goes on without it
                delete_files_created_by_app(demo, age=seconds)

    threading.Thread(target=clean, name="upload-cleaner", daemon=True).start()
    return stop


def build(offered: list[Offered], examples: list[Path]):
    """The Gradio page (not yet served)."""
    gr = gradio()
    models = {o.key: o.model for o in offered}
    with gr.Blocks(title="LeNet-5: draw a digit", analytics_enabled=False) as demo:
        gr.Markdown("# LeNet-5: draw a digit\nDraw one digit on the canvas, or upload a picture of one, and watch "
                    "the network read it.")  # fmt: skip
        with gr.Row(equal_height=False):
            with gr.Column(min_width=320, scale=4):
                canvas = read_by_the_page(
                    gr.Sketchpad(
                        label="Draw one digit",
                        type="pil",
                        image_mode="RGBA",
                        format="png",
                        canvas_size=(CANVAS, CANVAS),
                        brush=gr.Brush(default_size=BRUSH, colors=["#000000"], color_mode="fixed"),
                        layers=False,
                        height=440,
                        elem_id="canvas",
                    )
                )
                upload = gr.UploadButton("Upload a picture of a digit", file_types=["image"], elem_id="upload")
                uploaded = gr.State(None)  # the path of the upload on the page, if any
                picker = gr.Dropdown([(o.label, o.key) for o in offered], value=offered[0].key, label="checkpoint",
                                     elem_id="picker")  # fmt: skip
            with gr.Column(min_width=280, scale=3):
                gr.Markdown("## The network's answer")
                status = gr.HTML(f"<p>{IDLE}</p>", elem_id="status")
                top = gr.Label(num_top_classes=3, label="top 3", elem_id="prediction", show_label=True)
                gr.Markdown(EXPLAIN["answer"], elem_classes="explain")
                digit = gr.HTML(elem_id="digit", elem_classes="picture")
                shown = gr.HTML(elem_id="yours", elem_classes="picture")
            with gr.Column(min_width=320, scale=5):
                gr.Markdown("## Inside the network")
                c1 = gr.HTML(elem_id="c1", elem_classes="picture")
                c3 = gr.HTML(elem_id="c3", elem_classes="picture")
                gr.HTML(legend())
        if examples:
            gr.Markdown("## Examples to try")
            example = gr.Image(type="filepath", visible=False)
            gr.Examples([[str(p)] for p in examples], inputs=example, label="click one to read it",
                        examples_per_page=len(examples), elem_id="examples")  # fmt: skip
        outputs = [top, status, digit, c1, c3, shown]
        from_upload, from_canvas, from_either = handlers(models)
        live = {"trigger_mode": "always_last", "show_progress": "minimal", "show_progress_on": [status]}
        # .change: .input carries the canvas as it was before the stroke
        canvas.change(from_canvas, [canvas, uploaded, picker], [*outputs, uploaded], api_name="predict_canvas", **live)
        upload.upload(from_upload, [upload, picker], [*outputs, canvas, uploaded], api_name="predict", **live)
        picker.change(from_either, [canvas, uploaded, picker], outputs, api_visibility="private", **live)
        if examples:
            example.change(from_upload, [example, picker], [*outputs, canvas, uploaded], api_visibility="private",
                           **live)  # fmt: skip
        demo.load(None, js=page_script([p.name for p in examples]))
    return demo
