"""app.py: the page served on a free loopback port (once for the module), called through its API
with gradio_client, and drawn on with the mouse and by touch in headless Chromium when one is installed.

The browser test's screenshot goes to $APP_SCREENSHOT when set (scripts/make_docs.sh copies it to
docs/figures/app.png), else into a temporary folder."""

import os
import socket
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PROJECT_DIR, assert_user_error, save_weights
from PIL import Image, ImageDraw

import app
from eval import classify
from helper import load_model
from LeNet5 import LeNet5
from predict import predict_paths
from support.files import atomic_output

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
pytest.importorskip("gradio", reason="app.py needs gradio: pip install -r requirements.txt")
from gradio_client import Client, handle_file  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio.queueing"),  # pandas 3 vs gradio 6.31
    pytest.mark.xdist_group("app"),  # one served page for the whole file
]
COMMITTED = PROJECT_DIR / "checkpoints" / "lenet5.pt"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> Path:
    """A second checkpoint for the picker: an untrained LeNet5, alone in a stand-in checkpoints/ folder."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("checkpoints") / "untrained.pt"
    save_weights(path, LeNet5(), {})
    return path


@pytest.fixture(scope="module")
def served(untrained):
    """The page with the committed checkpoint first and the untrained one in the picker; stopped afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(app, "CHECKPOINT_DIR", untrained.parent)
        models = app.load_checkpoints(COMMITTED)
    demo = app.serve(models, "127.0.0.1", app.claim_port("127.0.0.1", 0))
    yield demo
    demo.close(verbose=False)


@pytest.fixture(scope="module")
def client(served, tmp_path_factory):
    api = Client(served.local_url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))
    yield api
    api.close()  # its heartbeat thread


def test_both_checkpoints_are_offered_committed_first(served, untrained):
    picker = next(b for b in served.blocks.values() if getattr(b, "elem_id", None) == "picker")
    assert [value for _, value in picker.choices] == ["checkpoints/lenet5.pt", str(untrained)]
    assert picker.visible


@pytest.mark.parametrize(
    "name, digit",
    [("three_blue_pen.jpg", 3), ("four_transparent.png", 4), ("five_chalk.bmp", 5), ("zero.gif", 0), ("one.png", 1)],
)
def test_api_reads_an_example_as_predict_py_does(client, name, digit):
    path = PROJECT_DIR / "examples" / name
    top, text, seen, c1, c3, _ = client.predict(handle_file(path), "checkpoints/lenet5.pt", api_name="/predict")
    expected = predict_paths(load_model(COMMITTED)[0], [path], topk=3)[0]
    assert top["label"] == str(digit) == str(expected["prediction"])
    assert [c["label"] for c in top["confidences"]] == [str(t["digit"]) for t in expected["topk"]]
    assert top["confidences"][0]["confidence"] == pytest.approx(expected["probability"], abs=1e-6)
    assert text == f"LeNet-5 reads **{digit}** ({app.percent(expected['probability'])})"
    np.testing.assert_array_equal(np.asarray(Image.open(seen)), expected["digit"].numpy())  # the very same 28x28
    assert Image.open(c1).size == (3 * 28 * 4 + 4, 2 * 28 * 4 + 2)  # 6 maps, 3 a row, 4x enlarged, 2 px gaps
    assert Image.open(c3).size == (4 * 10 * 8 + 6, 4 * 10 * 8 + 6)  # 16 maps, 4 a row, 8x enlarged


def test_the_picker_chooses_the_model(client, untrained):
    path = PROJECT_DIR / "examples" / "seven.jpg"
    digit = predict_paths(load_model(COMMITTED)[0], [path], topk=3)[0]["digit"]
    expected = classify(load_model(untrained)[0], digit[None], topk=3)[0]
    top, *_ = client.predict(handle_file(path), str(untrained), api_name="/predict")
    assert [c["label"] for c in top["confidences"]] == [str(t["digit"]) for t in expected["topk"]]
    assert [c["confidence"] for c in top["confidences"]] == pytest.approx([t["probability"] for t in expected["topk"]])


def canvas_value(tmp_path: Path, draw: bool):
    """What the Sketchpad sends: black strokes on a transparent canvas (or nothing drawn)."""
    image = Image.new("RGBA", (app.CANVAS, app.CANVAS), (0, 0, 0, 0))
    if draw:
        ImageDraw.Draw(image).line([(120, 100), (280, 100), (200, 330)], fill=(0, 0, 0, 255), width=2 * app.BRUSH)
    image.save(tmp_path / "canvas.png")
    return {"background": None, "layers": [], "composite": handle_file(tmp_path / "canvas.png")}


def test_a_drawing_on_the_canvas_is_read(client, tmp_path):
    top, text, seen, *_ = client.predict(
        canvas_value(tmp_path, True), None, "checkpoints/lenet5.pt", api_name="/predict_canvas"
    )
    assert top["label"] == "7" and "reads **7**" in text
    assert np.asarray(Image.open(seen)).shape == (28, 28)


@pytest.mark.parametrize("where", ["blank canvas", "empty canvas", "blank upload", "no upload"])
def test_no_digit_says_draw_a_digit(client, tmp_path, where):
    Image.new("RGB", (60, 60), "white").save(tmp_path / "blank.png")
    values, endpoint = {
        "blank canvas": ([canvas_value(tmp_path, False), None], "/predict_canvas"),
        "empty canvas": ([None, None], "/predict_canvas"),
        "blank upload": ([handle_file(tmp_path / "blank.png")], "/predict"),
        "no upload": ([None], "/predict"),
    }[where]
    top, text, seen, c1, c3, _ = client.predict(*values, "checkpoints/lenet5.pt", api_name=endpoint)
    assert top["label"] == "draw a digit" and text == "**draw a digit**"
    assert seen is None and c1 is None and c3 is None


@pytest.mark.parametrize(
    "write, reason",
    [
        (lambda p: p.write_text("not an image"), "not a readable image"),
        (lambda p: Image.new("RGB", (6000, 6000), "white").save(p), "too large: 6000 x 6000 pixels (limit 16,000,000)"),
        (lambda p: p.write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'/>"), "not a readable image"),
    ],
    ids=["text-as-png", "blank-6000x6000", "svg-as-png"],
)
def test_a_bad_upload_gets_the_apps_own_reason(client, tmp_path, write, reason):
    write(tmp_path / "upload.png")
    top, text, *pictures = client.predict(
        handle_file(tmp_path / "upload.png"), "checkpoints/lenet5.pt", api_name="/predict"
    )
    assert top["label"] == "draw a digit" and text.startswith(f"**draw a digit** ({reason}")


def test_fifty_visitors_at_once_all_get_their_pictures(client):
    """The same upload 50 times at once: every answer arrives whole (Gradio's own cache rewrote identical outputs
    in place, so some downloads came up short)."""
    seven = handle_file(PROJECT_DIR / "examples" / "seven.jpg")
    jobs = [client.submit(seven, "checkpoints/lenet5.pt", api_name="/predict") for _ in range(50)]
    answers = [job.result(timeout=300) for job in jobs]
    assert all(answer[0]["label"] == "7" for answer in answers)
    for _, _, *pictures, _ in answers:
        for picture in pictures:
            Image.open(picture).load()  # a truncated PNG raises here


def test_handlers_without_a_server(tmp_path, tiny_model):
    """An upload that is not an image says why; each input clears the other; a new checkpoint re-reads what is there."""
    from_upload, from_canvas, from_either = app.handlers({"m": tiny_model}, tmp_path / "pictures")
    (tmp_path / "notes.png").write_text("not an image")
    top, text, *pictures, canvas = from_upload(str(tmp_path / "notes.png"), "m")
    assert top == "draw a digit" and text.startswith("**draw a digit** (not a readable image")
    assert pictures == [None] * 3 and canvas is None
    seven = str(PROJECT_DIR / "examples" / "seven.jpg")
    blank = {"composite": Image.new("RGBA", (50, 50), (0, 0, 0, 0))}
    assert all(isinstance(out, type(app.gradio().skip())) for out in from_canvas(blank, seven, "m"))  # upload stays
    assert from_either(blank, seven, "m")[2] == from_upload(seven, "m")[2]
    drawing = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
    ImageDraw.Draw(drawing).line([(25, 5), (25, 45)], fill=(0, 0, 0, 255), width=5)
    *drawn, upload = from_canvas({"composite": drawing}, seven, "m")
    assert upload is None and drawn[2] != from_upload(seven, "m")[2]
    assert from_either({"composite": drawing}, None, "m")[2] == drawn[2]
    assert from_either(None, None, "m")[0] == "draw a digit"


def test_output_pictures_are_files_named_by_content_and_never_rewritten(tmp_path):
    pixels = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    first = Path(app.png_file(pixels, tmp_path))
    before = first.stat()
    again = Path(app.png_file(pixels.copy(), tmp_path))
    assert again == first and first.stat().st_ino == before.st_ino and first.stat().st_mtime_ns == before.st_mtime_ns
    np.testing.assert_array_equal(np.asarray(Image.open(first)), pixels)
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary file left behind


def test_the_page_warns_when_it_is_open_to_the_network():
    assert app.exposure_warning("127.0.0.1", 7860) is None and app.exposure_warning("localhost", 7860) is None
    warning = app.exposure_warning("0.0.0.0", 7860)
    assert warning.startswith("warning: --host 0.0.0.0: the page is reachable from the network")
    assert all(f"http://{a}:7860/" in warning for a in app.network_addresses("0.0.0.0"))
    assert app.network_addresses("192.0.2.7") == ["192.0.2.7"]


def test_percentages_are_written_as_the_bars_write_them():
    assert [app.percent(p) for p in (0.999, 0.995, 0.994, 0.685, 0.0004)] == ["100%", "100%", "99%", "69%", "0%"]


# --- the command line: errors before the server starts, and a real start and stop ----------------


def test_missing_or_broken_weights_are_one_line(cli, tmp_path):
    assert_user_error(cli("app", "--weights", tmp_path / "missing.pt"), "no such checkpoint")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    assert_user_error(cli("app", "--weights", tmp_path / "broken.pt"), "damaged")


def test_a_port_in_use_is_one_line(cli, weights):
    with socket.socket() as other_server:
        other_server.bind(("127.0.0.1", 0))
        other_server.listen()
        port = other_server.getsockname()[1]
        done = cli("app", "--weights", weights, "--port", port)
    assert_user_error(done, f"port {port} on 127.0.0.1 is in use; pass --port N or stop the other server")


@pytest.mark.parametrize(
    "flag", [["--port", "65536"], ["--port", "-1"], ["--port", "http"], ["--host", "192.0.2.1"]]
)  # 192.0.2.1: a documentation address, never this machine's, and no DNS look-up
def test_bad_host_or_port_is_one_line(cli, weights, flag):
    assert_user_error(cli("app", "--weights", weights, *flag), flag[0])


def test_other_checkpoints_that_do_not_load_are_left_out(tmp_path, weights, monkeypatch, capsys):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "good.pt").write_bytes(weights.read_bytes())
    (folder / "lenet5.torchscript.pt").write_bytes(b"PK not a checkpoint")
    monkeypatch.setattr(app, "CHECKPOINT_DIR", folder)
    assert list(app.load_checkpoints(weights)) == [str(weights), str(folder / "good.pt")]
    assert "not in the picker" in capsys.readouterr().out


def test_main_serves_on_loopback_without_a_share_link_until_ctrl_c(cli, weights, monkeypatch):
    seen = {}

    def visit_then_ctrl_c(demo):
        with urllib.request.urlopen(demo.local_url, timeout=30) as page:
            seen.update(url=demo.local_url, share=demo.share_url, status=page.status, html=page.read().decode())
        raise KeyboardInterrupt

    monkeypatch.setattr(app, "wait_until_stopped", visit_then_ctrl_c)
    done = cli("app", "--weights", weights, "--port", "0")
    assert done.returncode == 130, done.stderr
    assert f"LeNet-5 digit demo on {seen['url']}" in done.stdout
    assert seen["url"].startswith("http://127.0.0.1:") and seen["share"] is None
    assert seen["status"] == 200 and "LeNet-5: draw a digit" in seen["html"]
    port = int(seen["url"].rstrip("/").rsplit(":", 1)[1])
    assert app.claim_port("127.0.0.1", port) == port  # stopped: the port is free again


# --- a real browser -------------------------------------------------------------------------------

DESKTOP, PHONE = (1280, 800), (390, 844)
THREE = [[(-60, -90), (0, -110), (55, -80), (50, -30), (0, -5)], [(0, -5), (55, 25), (60, 75), (0, 105), (-60, 85)]]
SEVEN = [[(-70, -100), (70, -100), (-10, 110)]]
ONE = [[(0, -110), (0, 110)]]


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(f"needs Chromium ({CHROMIUM}, {CHROMEDRIVER}): apt-get install chromium chromium-driver")
    pytest.importorskip("selenium", reason="pip install -r requirements.txt")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with tempfile.TemporaryDirectory() as profile:
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--hide-scrollbars", "--force-device-scale-factor=1", f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
                     f"--user-data-dir={profile}"):  # fmt: skip
            options.add_argument(flag)
        # An explicit driver: Selenium Manager never looks for (or downloads) one.
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        yield driver
        driver.quit()


def open_page(driver, url: str, size: tuple[int, int]):
    """The page at a viewport of `size`, once the canvas is there and the brush chosen; returns the canvas."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # The viewport itself at `size` (headless Chromium's windows are at least 500 px wide), as a phone when narrow
    metrics = {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": size[0] < 500}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    driver.get(url)
    wait = WebDriverWait(driver, 30, poll_frequency=0.1)
    canvas = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#canvas canvas"))[0]
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#canvas .empty"))  # the page chooses the brush
    driver.get_log("browser")  # from here on, only what the visitor's actions log
    return canvas


def draw(driver, canvas, strokes: list[list[tuple[int, int]]], touch: bool = False) -> None:
    """Each stroke: down at its first point (pixels from the canvas's centre), a move to each of the others (the
    brush joins them with straight lines), up. Moves go to page coordinates: an element as their origin makes the
    driver look the element up again for every move, several times slower."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    box = driver.execute_script("return arguments[0].getBoundingClientRect().toJSON()", canvas)
    x0, y0 = round(box["x"] + box["width"] / 2), round(box["y"] + box["height"] / 2)
    for (x, y), *rest in strokes:
        pointer = PointerInput(interaction.POINTER_TOUCH, "finger") if touch else None
        actions = ActionBuilder(driver, mouse=pointer, duration=10)
        actions.pointer_action.move_to_location(x0 + x, y0 + y).pointer_down()
        for dx, dy in rest:
            actions.pointer_action.move_to_location(x0 + dx, y0 + dy)
        actions.pointer_action.pointer_up()
        actions.perform()


def status(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "status").text


def wait_for_status(driver, expected: str) -> str:
    """The text under the prediction once it contains `expected` (or whatever it says after 30 s)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, 30, poll_frequency=0.05).until(lambda d: expected in status(d))
    except TimeoutException:
        pass
    return status(driver)


def busy(driver) -> bool:
    """Whether the prediction shows Gradio's progress overlay (spinner and timer)."""
    return driver.execute_script("return !!document.querySelector('#prediction .wrap:not(.hide)')")


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def clear_canvas(driver) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "#canvas button[aria-label='Clear canvas']").click()


def test_drawing_with_the_mouse_in_chromium(served, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    canvas = open_page(browser, served.local_url, DESKTOP)
    wait = WebDriverWait(browser, 30, poll_frequency=0.05)
    assert "draw a digit" in browser.find_element(By.ID, "prediction").text
    draw(browser, canvas, THREE[:1])
    wait.until(busy)  # the visitor sees that something is happening
    draw(browser, canvas, THREE[1:])  # a 3 in two strokes, as people write one
    assert "reads 3" in wait_for_status(browser, "reads 3")
    assert browser.find_element(By.ID, "prediction").text.splitlines()[1] == "3"  # the label's heading
    shown = "const p = [...document.querySelectorAll('#digit img, .picture img')]; return p.length == 3 && p.every(i => i.complete)"  # noqa: E501
    wait.until(lambda d: d.execute_script(shown))  # the 28x28 and both feature-map grids, loaded
    wait.until(lambda d: not busy(d))
    screenshot = Path(os.environ.get("APP_SCREENSHOT") or tmp_path / "app.png")
    with atomic_output(screenshot) as tmp:
        tmp.write_bytes(browser.get_screenshot_as_png())
    assert Image.open(screenshot).size == DESKTOP
    bottom = "return Math.max(...['#prediction', '#status', '#digit'].map(s => document.querySelector(s).getBoundingClientRect().bottom))"  # noqa: E501
    assert browser.execute_script(bottom) <= DESKTOP[1]  # the results beside the canvas, no scrolling at 1280x800

    browser.find_element(By.CSS_SELECTOR, "#canvas button[aria-label=Undo]").click()  # the lower stroke goes
    wait.until(lambda d: "reads 3" not in status(d))
    assert "reads" in status(browser)  # the upper stroke is still there, read as some other digit
    clear_canvas(browser)
    assert wait_for_status(browser, "draw a digit") == "draw a digit"
    for digit, strokes in (("7", SEVEN), ("1", ONE)):
        draw(browser, canvas, strokes)
        assert f"reads {digit}" in wait_for_status(browser, f"reads {digit}")
        clear_canvas(browser)
        assert wait_for_status(browser, "draw a digit") == "draw a digit"
    assert console_errors(browser) == []


def test_the_latest_input_wins_and_no_stale_upload_stays(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    canvas = open_page(browser, served.local_url, DESKTOP)
    wait = WebDriverWait(browser, 30, poll_frequency=0.1)
    upload = browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]")
    upload.send_keys(str(PROJECT_DIR / "examples" / "two.png"))  # as if chosen in the file dialog
    assert "reads 2" in wait_for_status(browser, "reads 2")
    draw(browser, canvas, SEVEN)
    assert "reads 7" in wait_for_status(browser, "reads 7")
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#upload .file-preview"))  # the upload is gone
    clear_canvas(browser)
    assert wait_for_status(browser, "draw a digit") == "draw a digit"
    upload = browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]")
    upload.send_keys(str(PROJECT_DIR / "examples" / "seven.jpg"))
    assert "reads 7" in wait_for_status(browser, "reads 7")
    assert browser.find_elements(By.CSS_SELECTOR, "#upload .file-preview")  # the upload shows what is read
    assert console_errors(browser) == []


def test_drawing_by_touch_on_a_phone(served, browser):
    canvas = open_page(browser, served.local_url, PHONE)
    draw(browser, canvas, SEVEN, touch=True)
    assert "reads 7" in wait_for_status(browser, "reads 7")
    box = "s => document.querySelector(s).getBoundingClientRect()"
    layout = browser.execute_script(
        f"const box = {box}; const c = box('#canvas'), p = box('#prediction'), u = box('#upload');"
        "const label = box('#canvas label'), tools = box('#canvas .top-panel');"
        "const palette = box('#canvas .toolbar-wrap'), drawing = box('#canvas .pixi-target');"
        "return [innerWidth, c.bottom <= p.top, p.top < u.top, c.right <= innerWidth, label.right <= tools.left,"
        "        palette.right <= drawing.left]"
    )
    # 390 px wide; the prediction directly under the canvas, the upload after it; the canvas's label clear of
    # its zoom and undo buttons, and its brush palette beside the drawing area rather than on the square
    assert layout == [PHONE[0], True, True, True, True, True]
    assert console_errors(browser) == []


def stroke_to_prediction_seconds(driver, canvas) -> float:
    """From the end of the stroke that completes a 7 to the new text under the prediction."""
    from selenium.webdriver.support.ui import WebDriverWait

    clear_canvas(driver)
    wait_for_status(driver, "draw a digit")
    draw(driver, canvas, [[(-70, -100), (70, -100)]])
    wait_for_status(driver, "reads")
    before = status(driver)
    start = time.perf_counter()
    draw(driver, canvas, [[(70, -100), (-10, 110)]])
    WebDriverWait(driver, 60, poll_frequency=0.01).until(lambda d: status(d) != before)
    return time.perf_counter() - start


@pytest.mark.skipif(not os.environ.get("MEASURE_LATENCY"), reason="a measurement, not a test: MEASURE_LATENCY=1")
def test_measure_stroke_to_prediction(served, browser):
    canvas = open_page(browser, served.local_url, DESKTOP)
    times = [stroke_to_prediction_seconds(browser, canvas) for _ in range(20)]
    print(f"stroke to prediction, median of {len(times)}: {statistics.median(times):.2f} s "
          f"(min {min(times):.2f}, max {max(times):.2f})")  # fmt: skip
