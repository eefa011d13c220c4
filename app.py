"""Draw a digit and watch LeNet-5 read it: a local web page (Gradio) with a drawing canvas, a picture upload and
example digits to click; the top 3 as you draw, the 28x28 exactly as the network receives it (the same
preprocessing as predict.py), and its C1 and C3 feature maps, each panel explained on the page.

    python app.py --weights checkpoints/lenet5.pt --port 7860      # then open the printed address

The page is served on this machine only (127.0.0.1) unless --host says otherwise; no public link is made unless
--share is given. Every checkpoint in checkpoints/ that loads (.pt, .safetensors, Hugging Face Hub folders) is
offered in a picker, labelled with its recipe and test accuracy, the same weights once. The page itself is
extras/demo.py.
"""

import errno
import ipaddress
import os
import socket
import tempfile
import time
from pathlib import Path

from support.cli import PROJECT_DIR, CliParser, UserError, add_device_flag, add_weights_flag, number, run_cli

from extras.demo import CSS, PHONE_HEAD, Offered, build, example_files, keep_uploads_for, offered_checkpoints
from support.devices import choose_device
from support.files import check_output_dir

CHECKPOINT_DIR = PROJECT_DIR / "checkpoints"
EXAMPLES_DIR = PROJECT_DIR / "examples"
CACHE_SECONDS = 600  # uploads older than this are deleted from Gradio's cache, every as many seconds
MAX_UPLOAD = "25mb"  # a phone photo is a few MB; Gradio refuses larger uploads before they are stored


def display_name(path: Path) -> str:
    """A checkpoint as the picker shows it: relative to the project when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(PROJECT_DIR)) if path.is_relative_to(PROJECT_DIR) else str(path)


def upload_folder() -> Path:
    """Where Gradio keeps uploads ($GRADIO_TEMP_DIR, else the system's temporary folder's gradio/), checked before
    Gradio is imported: Gradio makes folders there as it is imported, a traceback when it cannot (its own
    gradio.utils.get_upload_folder says the same place)."""
    folder = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
    check_output_dir(folder, "GRADIO_TEMP_DIR (where the page keeps uploads)")
    return folder


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


# --- serving --------------------------------------------------------------------------------------


def serve(offered: list[Offered], host: str, port: int, share: bool = False):
    """Start the page in a background thread and return the Gradio app (its address: .local_url; .close() stops it)."""
    demo = build(offered, example_files(EXAMPLES_DIR))
    try:
        style = {"css": CSS, "head": PHONE_HEAD, "footer_links": []}  # (the footer's links fail the contrast rule)
        demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=True,
                    max_file_size=MAX_UPLOAD, **style)  # fmt: skip
    except OSError as err:  # the port was taken between claim_port and now
        demo.close(verbose=False)
        raise UserError(f"cannot serve on {host} port {port}: {err}; pass --port N or stop the other server") from None
    keep_uploads_for(demo, CACHE_SECONDS)
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
    upload_folder()
    offered = offered_checkpoints(args.weights, CHECKPOINT_DIR, choose_device(args.device), display_name)
    port = claim_port(args.host, args.port)
    demo = serve(offered, args.host, port, args.share)
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
