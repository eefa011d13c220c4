"""Draw a digit and watch LeNet-5 read it: a local web page (Gradio) with a drawing canvas and an
image upload, the top-3 digits as you draw, the 28x28 image exactly as the network receives it
(the same preprocessing as predict.py: digits.py), and its C1 and C3 feature maps.

    python app.py --weights checkpoints/lenet5.pt --port 7860      # then open the printed address

The page is served on this machine only (127.0.0.1) unless --host says otherwise; no public link
is made unless --share is given. Every other checkpoint in checkpoints/ that loads is offered in a
picker on the page.
"""

import errno
import hashlib
import io
import ipaddress
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

from support.cli import PROJECT_DIR, CliParser, UserError, add_device_flag, add_weights_flag, number, run_cli

import numpy as np
import torch
from torch import nn

from data import preprocess
from eval import classify
from extras.digits import ImageProblem, grey_from_image, load_grayscale, to_mnist_digit
from helper import CheckpointError, load_model
from support.devices import choose_device, place_batch
from support.files import atomic_output

CHECKPOINT_DIR = PROJECT_DIR / "checkpoints"
NO_DIGIT = "draw a digit"
CANVAS = 400  # canvas pixels per side; the digit is cropped and scaled to 20 px anyway
BRUSH = 16  # brush radius in canvas pixels: strokes about as thick, relative to the digit, as MNIST's pen
PAGE_MAX_PIXELS = 16_000_000  # an upload decoding to more is refused unread (a JPEG decodes at 1/2 to 1/8 size)
# Gradio shows a small image at its own size (28 px): fill the box instead, pixel for pixel, not smoothed;
# keep the square pictures below their floating labels; keep the canvas and its tools inside a phone's width.
# On a phone (the Sketchpad's brush palette floats over its left edge): draw to the right of the palette, in a
# box no taller than the square needs, on a page with narrow margins (outside the part of the page that
# Gradio lets `css` style, hence `head`). tests/test_app.py checks this layout in Chromium.
CSS = """
#digit img { image-rendering: pixelated; object-fit: contain; }
.picture .image-frame { padding-top: 32px; box-sizing: border-box; }
#canvas { max-width: 100%; }
#legend { display: flex; align-items: center; gap: 6px; font-size: 0.85em; }
#legend .bar { width: 160px; height: 12px; border: 1px solid #888; }
@media (max-width: 480px) {
  #canvas { height: 370px !important; }
  #canvas .pixi-target, #canvas .pixi-target-crop { left: 48px; width: calc(100% - 48px); }
}
"""
PHONE_HEAD = "<style>@media (max-width: 480px) { .gradio-container .main.app { padding: 8px; } }</style>"
# The Sketchpad opens, and returns after "clear", with no tool chosen ("select the draw tool to start"):
# whenever that hint shows, choose the brush for the visitor (a click before the canvas is ready is lost,
# so keep checking rather than clicking once).
SELECT_BRUSH = """() => setInterval(() => {
  if (document.querySelector("#canvas .empty")) document.querySelector("#canvas button[aria-label=Brush]")?.click();
}, 250)"""

Outputs = tuple[Any, str, str | None, str | None, str | None]


def gradio():
    """Gradio, imported on first use: it takes seconds, which --help and the error paths do not need."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: this is a local demo
    import gradio as gr

    return gr


# --- checkpoints and the port, checked before the server starts ---------------------------------


def display_name(path: Path) -> str:
    """A checkpoint as the picker shows it: relative to the project when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(PROJECT_DIR)) if path.is_relative_to(PROJECT_DIR) else str(path)


def load_checkpoints(weights: Path, device: torch.device | str = "cpu") -> dict[str, nn.Module]:
    """--weights first (a broken one is a UserError), then every other checkpoint in checkpoints/ that loads."""
    models = {display_name(weights): load_model(weights, device)[0]}
    for path in sorted(CHECKPOINT_DIR.glob("*.pt")):
        if display_name(path) in models:
            continue
        try:
            models[display_name(path)] = load_model(path, device)[0]
        except CheckpointError as err:  # an export or a damaged file: the page still starts
            print(f"not in the picker: {err}")
    return models


def claim_port(host: str, port: int) -> int:
    """The port the server can use on host (0: any free one), checked by binding it; else a UserError."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as err:
        raise UserError(f"--host {host} is not a usable address ({err}); try --host 127.0.0.1") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server's own socket does
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} on {host} is in use; pass --port N or stop the other server") from None
            raise UserError(f"cannot serve on --host {host} --port {port}: {err.strerror or err}") from None
        return probe.getsockname()[1]


def network_addresses(host: str) -> list[str] | None:
    """The addresses at which other machines reach a server listening on `host`; None for a loopback host."""
    listening = ipaddress.ip_address(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0])
    if listening.is_loopback:
        return None
    if not listening.is_unspecified:
        return [str(listening)]
    found = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM)}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # UDP: picks the outgoing interface, sends nothing
            found.add(probe.getsockname()[0])
        except OSError:  # no route: no network either
            pass
    return sorted(a for a in found if not ipaddress.ip_address(a.split("%")[0]).is_loopback)


def exposure_warning(host: str, port: int) -> str | None:
    """One line when the page is open to the network, with its addresses there; None on loopback."""
    addresses = network_addresses(host)
    if addresses is None:
        return None
    urls = ", ".join(f"http://{f'[{a}]' if ':' in a else a}:{port}/" for a in addresses) or "this machine's addresses"
    return f"warning: --host {host}: the page is reachable from the network, by anyone who can reach {urls}"


# --- what the page shows ------------------------------------------------------------------------


def tile(maps: torch.Tensor, columns: int, zoom: int, gap: int = 2) -> np.ndarray:
    """K x H x W activations in -1..1 -> one RGB uint8 grid, each map enlarged `zoom` times (yellow +1, purple -1)."""
    from matplotlib import colormaps

    count, height, width = maps.shape
    rows = -(-count // columns)
    cell_h, cell_w = height * zoom + gap, width * zoom + gap
    grid = torch.full((rows * cell_h - gap, columns * cell_w - gap), float("nan"))  # NaN: the white gaps
    big = maps.float().cpu().repeat_interleave(zoom, 1).repeat_interleave(zoom, 2)
    for k in range(count):
        row, col = divmod(k, columns)
        grid[row * cell_h : row * cell_h + height * zoom, col * cell_w : col * cell_w + width * zoom] = big[k]
    colours = colormaps["viridis"].with_extremes(bad="white")(((grid + 1) / 2).numpy())
    return (colours[..., :3] * 255).round().astype(np.uint8)


def png_file(pixels: np.ndarray, folder: Path) -> str:
    """An image the page shows, as a PNG file in `folder` named by its content, written atomically.

    Handing Gradio a file already in its cache folder makes it serve that file as it is. Given an array
    instead, Gradio writes the PNG in place under a name made from its content, so two visitors who get
    the same picture truncate the file while the other one is being sent ("Too little data for declared
    Content-Length"); a file that is renamed into place is never seen half-written."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    data = buffer.getvalue()
    path = folder / f"{hashlib.sha256(data).hexdigest()[:32]}.png"
    if not path.exists():
        with atomic_output(path) as tmp:
            tmp.write_bytes(data)
    return str(path)


def percent(probability: float) -> str:
    """A probability as the page writes it everywhere: whole percents, rounded half up, as gr.Label's bars do."""
    return f"{math.floor(probability * 100 + 0.5)}%"


def legend() -> str:
    """HTML: the feature maps' colour scale, -1 (purple) to +1 (yellow), the range of tanh."""
    from matplotlib import colormaps

    stops = ", ".join(
        "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in colormaps["viridis"](i / 8)[:3])) for i in range(9)
    )
    bar = f'<span class="bar" style="background: linear-gradient(to right, {stops})"></span>'
    return f'<div id="legend">feature maps (tanh): <span>-1</span>{bar}<span>+1</span> (white: gaps)</div>'


def nothing(why: str = "") -> Outputs:
    """What the page shows without a digit: "draw a digit" (and why not, for a file that cannot be read)."""
    return NO_DIGIT, f"**{NO_DIGIT}**" + (f" ({why})" if why else ""), None, None, None


@torch.inference_mode()
def look(model: nn.Module, grey: torch.Tensor | None, folder: Path) -> Outputs:
    """H x W grey (None: nothing there) -> (top 3 for gr.Label, a line of text, PNG files of the 28x28, C1 and C3
    grids in `folder`)."""
    if grey is None:
        return nothing()
    try:
        digit = to_mnist_digit(grey)
    except ImageProblem:  # blank, or too faint: a prompt, not an error
        return nothing()
    result = classify(model, digit[None], topk=3)[0]
    maps = model.feature_maps(place_batch(preprocess(digit[None]), next(model.parameters()).device))
    top = {str(t["digit"]): t["probability"] for t in result["topk"]}
    text = f"LeNet-5 reads **{result['prediction']}** ({percent(result['probability'])})"
    pictures = [digit.numpy(), tile(maps["C1"][0], columns=3, zoom=4), tile(maps["C3"][0], columns=4, zoom=8)]
    return top, text, *(png_file(picture, folder) for picture in pictures)


def canvas_grey(editor: dict[str, Any] | None) -> torch.Tensor | None:
    """The Sketchpad's composite (strokes on a transparent canvas) as grey, through digits.py like any file."""
    composite = (editor or {}).get("composite")
    return None if composite is None else grey_from_image(composite)


def upload_grey(path: str | None) -> torch.Tensor | None:
    """An uploaded file, read as predict.py reads one but with the page's smaller pixel limit (ImageProblem when
    it cannot be): the page, not Gradio, opens uploads, so a bad one costs little and says why."""
    return None if path is None else load_grayscale(Path(path), max_pixels=PAGE_MAX_PIXELS)


def handlers(models: dict[str, nn.Module], folder: Path):
    """The page's events. One input at a time: a drawing clears the upload and an upload clears the canvas (the
    last output of each); another checkpoint re-reads whichever is there."""

    def read_upload(path: str | None, name: str) -> Outputs:
        try:
            grey = upload_grey(path)
        except ImageProblem as problem:  # too large, or not an image after all
            return nothing(str(problem))
        return look(models[name], grey, folder)

    def from_upload(path: str | None, name: str) -> tuple:
        return *read_upload(path, name), None

    def from_canvas(editor: dict[str, Any] | None, path: str | None, name: str) -> tuple:
        grey = canvas_grey(editor)
        if path is not None and (grey is None or grey.min() == grey.max()):  # cleared for that upload: keep it
            return (gradio().skip(),) * 6
        return *look(models[name], grey, folder), None

    def from_either(editor: dict[str, Any] | None, path: str | None, name: str) -> Outputs:
        return read_upload(path, name) if path is not None else look(models[name], canvas_grey(editor), folder)

    return from_upload, from_canvas, from_either


def results_column(gr) -> list:
    """Beside the canvas (under it on a phone): top 3, a line of text, the 28x28."""
    label = gr.Label(NO_DIGIT, num_top_classes=3, label="prediction (top 3)", elem_id="prediction")
    status = gr.Markdown(f"**{NO_DIGIT}**", elem_id="status")
    digit = gr.Image(label="28x28, as the network receives it", elem_id="digit", format="png", height=190)
    return [label, status, digit]


def feature_maps_row(gr) -> list:
    """Under both: the C1 and C3 maps and their colour scale."""
    with gr.Row():
        picture = {"format": "png", "height": 260, "elem_classes": "picture"}  # PNG: the pictures arrive unaltered
        c1 = gr.Image(label="C1 feature maps (6 of 28x28)", **picture)
        c3 = gr.Image(label="C3 feature maps (16 of 10x10)", **picture)
    gr.HTML(legend())
    return [c1, c3]


def build(models: dict[str, nn.Module]):
    """The Gradio page (not yet served)."""
    gr = gradio()
    from gradio.utils import get_upload_folder

    names = list(models)
    with gr.Blocks(title="LeNet-5: draw a digit", analytics_enabled=False) as demo:
        gr.Markdown("## LeNet-5: draw a digit\nDraw on the canvas, or upload a picture of a digit.")
        with gr.Row():
            with gr.Column(min_width=320):
                canvas = gr.Sketchpad(
                    label="draw a digit here",
                    type="pil",
                    image_mode="RGBA",
                    format="png",
                    canvas_size=(CANVAS, CANVAS),
                    brush=gr.Brush(default_size=BRUSH, colors=["#000000"], color_mode="fixed"),
                    layers=False,
                    height=440,
                    elem_id="canvas",
                )
            with gr.Column(min_width=300):
                outputs = results_column(gr)
                upload = gr.File(label="or upload a picture", file_types=["image"], height=100, elem_id="upload")
                picker = gr.Dropdown(
                    names, value=names[0], label="checkpoint", visible=len(names) > 1, elem_id="picker"
                )
        outputs += feature_maps_row(gr)
        from_upload, from_canvas, from_either = handlers(models, Path(get_upload_folder()) / "lenet5")
        live = {"trigger_mode": "always_last", "show_progress": "full", "show_progress_on": outputs[:1]}
        # .change: .input carries the canvas as it was before the stroke
        canvas.change(from_canvas, [canvas, upload, picker], [*outputs, upload], api_name="predict_canvas", **live)
        upload.upload(from_upload, [upload, picker], [*outputs, canvas], api_name="predict", **live)
        upload.clear(nothing, None, outputs, api_visibility="private")
        picker.change(from_either, [canvas, upload, picker], outputs, api_visibility="private", **live)
        demo.load(None, js=SELECT_BRUSH)
    return demo


# --- serving --------------------------------------------------------------------------------------


def serve(models: dict[str, nn.Module], host: str, port: int, share: bool = False):
    """Start the page in a background thread and return the Gradio app (its address: .local_url; .close() stops it)."""
    demo = build(models)
    try:
        style = {"css": CSS, "head": PHONE_HEAD}
        demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=True, **style)
    except OSError as err:  # the port was taken between claim_port and now
        demo.close(verbose=False)
        raise UserError(f"cannot serve on {host} port {port}: {err}; pass --port N or stop the other server") from None
    return demo


def wait_until_stopped(demo) -> None:
    while demo.is_running:
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> None:
    p = CliParser(__doc__)
    add_weights_flag(p, help="the checkpoint shown first (the others in checkpoints/ are offered in a picker)")
    add_device_flag(p)
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every network interface)")
    p.add_argument("--port", type=number(int, 0, 65535), default=7860, help="port to serve on (0: any free port)")
    p.add_argument("--share", action="store_true", help="also make a public gradio.live link (needs the internet)")
    args = p.parse_args(argv)
    models = load_checkpoints(args.weights, choose_device(args.device))
    port = claim_port(args.host, args.port)
    demo = serve(models, args.host, port, args.share)
    print(f"LeNet-5 digit demo on {demo.local_url}  (Ctrl-C stops it)", flush=True)
    if warning := exposure_warning(args.host, port):
        print(warning, flush=True)
    if demo.share_url:
        print(f"public link: {demo.share_url}", flush=True)
    try:
        wait_until_stopped(demo)
    finally:
        demo.close(verbose=False)


if __name__ == "__main__":
    run_cli(main)
