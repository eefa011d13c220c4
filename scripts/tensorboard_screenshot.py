"""The README's picture of TensorBoard: serve a log folder on a free loopback port, open its Scalars
page in headless Chromium (Debian's chromium and chromium-driver), wait for the charts, save a PNG.

    python main.py --limit 2000 --epochs 1 --tensorboard /tmp/tbruns
    python -m scripts.tensorboard_screenshot /tmp/tbruns --out docs/figures/tensorboard.png
"""

import argparse
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

from support.cli import PROJECT_DIR, CliParser, UserError, number, output_file, run_cli

from support.figures import FIGURE, marked_png
from support.files import atomic_output, check_output_file

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# The legacy Scalars dashboard draws each chart in a vz-line-chart2 element, inside nested shadow roots.
COUNT_CHARTS = """
const count = (root) => [...root.querySelectorAll('*')].reduce(
    (n, e) => n + (e.tagName === 'VZ-LINE-CHART2' ? 1 : 0) + (e.shadowRoot ? count(e.shadowRoot) : 0), 0);
return count(document);
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(logdir: Path, port: int) -> subprocess.Popen:
    """TensorBoard on 127.0.0.1:port, once it answers (a UserError if it does not within a minute)."""
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1"]
    server = subprocess.Popen([*command, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2).read()
            return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise UserError(f"TensorBoard did not start: {server.communicate()[1].decode(errors='replace')[-300:]}")


def screenshot(url: str, charts: int, size: tuple[int, int]) -> bytes:
    """The page as PNG bytes, once `charts` charts are on it and have had time to draw."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    with tempfile.TemporaryDirectory() as profile:
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                     "--disable-background-networking", "--disable-component-update", "--hide-scrollbars",
                     "--force-device-scale-factor=1", f"--window-size={size[0]},{size[1]}",
                     f"--user-data-dir={profile}"):  # fmt: skip
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            driver.get(url)
            WebDriverWait(driver, 60).until(lambda d: d.execute_script(COUNT_CHARTS) >= charts)
            time.sleep(3)  # the charts fetch their data and animate in after the elements exist
            return driver.get_screenshot_as_png()
        finally:
            driver.quit()


def main(argv: list[str] | None = None) -> None:
    p = CliParser(__doc__)
    p.add_argument("logdir", type=Path, help="the folder given to main.py --tensorboard")
    default = PROJECT_DIR / "docs" / "figures" / "tensorboard.png"
    p.add_argument("--out", type=output_file, default=default, help="PNG to write")
    p.add_argument("--tag-filter", type=regular_expression, default="train/",
                   help="the tags shown first (a regular expression)")  # fmt: skip
    p.add_argument("--charts", type=number(int, 1), default=2, help="wait until this many charts are drawn")
    args = p.parse_args(argv)
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        raise UserError(f"needs {CHROMIUM} and {CHROMEDRIVER}: apt-get install chromium chromium-driver")
    if not args.logdir.is_dir() or not any(args.logdir.rglob("events.out.tfevents.*")):
        raise UserError(f"{args.logdir}: no TensorBoard event files; run main.py --tensorboard {args.logdir} first")
    check_output_file(args.out, "--out", kind=FIGURE, example="tensorboard.png")
    port = free_port()
    server = serve(args.logdir, port)
    try:
        url = f"http://127.0.0.1:{port}/#scalars&tagFilter={quote(args.tag_filter, safe='')}"
        png = screenshot(url, args.charts, (1400, 860))
    finally:
        server.terminate()
        server.wait(timeout=30)
    with atomic_output(args.out) as tmp:
        tmp.write_bytes(marked_png(png))
    print(f"wrote {args.out}")


def regular_expression(text: str) -> str:
    """An argparse type: a pattern TensorBoard can use (it would show "malformed regular expression" in the shot)."""
    try:
        re.compile(text)
    except re.error as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular expression ({err})") from None
    return text


if __name__ == "__main__":
    run_cli(main)
