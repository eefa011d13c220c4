"""extras/demo.py: the drawing page, served as app.py serves it. Its API as gradio_client calls it (the same
answers as predict.py, an own line for every outcome, many visitors at once, nothing written per prediction,
old uploads deleted), and a real headless Chromium: mouse and touch, the layout at 1280x800 and on a 390x844
phone, the console, an accessibility audit (axe-core) and keyboard access."""

import base64
import io
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PROJECT_DIR, save_weights
from PIL import Image, ImageDraw

import app
from eval import classify
from extras import demo as page
from extras.exports import FORMATS, export
from helper import load_checkpoint, load_model
from LeNet5 import LeNet5
from predict import predict_paths
from support.figures import marked_png
from support.files import atomic_output

gradio_client = pytest.importorskip("gradio_client", reason="pip install -r requirements.txt")
from gradio_client import Client, handle_file  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio.queueing"),  # pandas 3 vs gradio 6.31
    pytest.mark.xdist_group("app"),  # one served page for the whole file
]
COMMITTED = PROJECT_DIR / "checkpoints" / "lenet5.pt"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module", autouse=True)
def uploads(tmp_path_factory) -> Path:
    """A folder of this file's own for Gradio's uploads: the system's temporary one is shared by every process, and
    another test worker's page, with a short cache time, deleted this one's uploads as they were read."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("gradio")
        patch.setenv("GRADIO_TEMP_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A stand-in checkpoints/ folder: an untrained LeNet5, and what must not be offered or offered once."""
    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    untrained = save_weights(folder / "untrained.pt", LeNet5(), {})
    images = torch.randn(4, 1, 32, 32)
    export(load_checkpoint(untrained), FORMATS["safetensors"], folder / "untrained.safetensors", images, "noise")
    export(load_checkpoint(untrained), FORMATS["hub"], folder / "untrained-hub", images, "noise")  # same weights
    (folder / "damaged.pt").write_bytes(b"PK not a checkpoint")
    (folder / "lenet5.resume.pt").write_bytes(COMMITTED.read_bytes())  # an interrupted run's state: not a model
    return folder


@pytest.fixture(scope="module")
def offered(folder):
    return page.offered_checkpoints(COMMITTED, folder, "cpu", app.display_name)


@pytest.fixture(scope="module")
def served(offered):
    demo = app.serve(offered, "127.0.0.1", app.claim_port("127.0.0.1", 0))
    yield demo
    demo.close(verbose=False)


@pytest.fixture(scope="module")
def client(served, tmp_path_factory):
    api = Client(served.local_url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))
    yield api
    api.close()  # its heartbeat thread


def test_every_checkpoint_that_loads_is_offered_once_with_what_it_is(offered, folder, capsys):
    assert [o.key for o in offered] == ["checkpoints/lenet5.pt", str(folder / "untrained.pt")]
    committed = load_checkpoint(COMMITTED)
    accuracy = f"{100 * committed.metrics['test_accuracy']:.2f} %"
    assert offered[0].label == f"default recipe, {accuracy} test accuracy · checkpoints/lenet5.pt"
    assert offered[1].label.startswith("recipe not recorded, no test accuracy · ")
    # the exports of untrained.pt hold its weights: offered once; a damaged file: said, and not offered
    alone = page.offered_checkpoints(folder / "untrained.safetensors", folder, "cpu", app.display_name)
    assert [o.key for o in alone] == [str(folder / "untrained.safetensors")]  # --weights first, its twins left out
    assert f"not offered on the page: {folder / 'damaged.pt'}: not a readable checkpoint" in capsys.readouterr().out


def data_url_pixels(html: str) -> np.ndarray:
    """The picture inside an <img src="data:image/png;base64,...">."""
    (encoded,) = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))))


@pytest.mark.parametrize(
    "name, digit",
    [("three_blue_pen.jpg", 3), ("four_transparent.png", 4), ("five_chalk.bmp", 5), ("zero.gif", 0), ("one.png", 1)],
)
def test_api_reads_an_example_as_predict_py_does(client, name, digit):
    path = PROJECT_DIR / "examples" / name
    top, status, seen, c1, c3, yours, canvas = client.predict(
        handle_file(path), "checkpoints/lenet5.pt", api_name="/predict"
    )
    expected = predict_paths(load_model(COMMITTED)[0], [path], topk=3)[0]
    assert top["label"] == str(digit) == str(expected["prediction"])
    assert [c["label"] for c in top["confidences"]] == [str(t["digit"]) for t in expected["topk"]]
    assert top["confidences"][0]["confidence"] == pytest.approx(expected["probability"], abs=1e-6)
    assert f"LeNet-5 reads {digit} ({page.percent(expected['probability'])})." in status
    np.testing.assert_array_equal(data_url_pixels(seen), expected["digit"].numpy())  # the very same 28x28
    assert data_url_pixels(c1).shape[:2] == (2 * 28 * 3 + 2, 3 * 28 * 3 + 4)  # 6 maps, 3 a row, 3x, 2 px gaps
    assert data_url_pixels(c3).shape[:2] == (4 * 10 * 6 + 6, 4 * 10 * 6 + 6)  # 16 maps, 4 a row, 6x
    for html in (seen, c1, c3, yours):
        assert re.search(r'alt="[^"]+"', html)  # every picture is described for screen readers
    assert max(data_url_pixels(yours).shape[:2]) <= page.SHOWN_SIDE  # the upload, shown back
    assert canvas is None  # an upload clears the canvas


def test_the_picker_chooses_the_model(client, folder):
    path = PROJECT_DIR / "examples" / "seven.jpg"
    digit = predict_paths(load_model(COMMITTED)[0], [path], topk=3)[0]["digit"]
    expected = classify(load_model(folder / "untrained.pt")[0], digit[None], topk=3)[0]
    top, *_ = client.predict(handle_file(path), str(folder / "untrained.pt"), api_name="/predict")
    assert [c["label"] for c in top["confidences"]] == [str(t["digit"]) for t in expected["topk"]]
    assert [c["confidence"] for c in top["confidences"]] == pytest.approx([t["probability"] for t in expected["topk"]])


def canvas_value(tmp_path: Path, draw: bool):
    """What the Sketchpad sends: black strokes on a transparent canvas (or nothing drawn)."""
    image = Image.new("RGBA", (page.CANVAS, page.CANVAS), (0, 0, 0, 0))
    if draw:
        ImageDraw.Draw(image).line([(120, 100), (280, 100), (200, 330)], fill=(0, 0, 0, 255), width=2 * page.BRUSH)
    image.save(tmp_path / "canvas.png")
    return {"background": None, "layers": [], "composite": handle_file(tmp_path / "canvas.png")}


def test_a_drawing_on_the_canvas_is_read(client, tmp_path):
    top, status, seen, *_ = client.predict(
        canvas_value(tmp_path, True), "checkpoints/lenet5.pt", api_name="/predict_canvas"
    )
    assert top["label"] == "7" and "LeNet-5 reads 7" in status
    assert data_url_pixels(seen).shape == (28, 28)


OUTCOMES = {
    "empty canvas": (None, "Draw a digit on the canvas, or upload a picture of one."),
    "blank canvas": ("canvas", "Draw a digit on the canvas, or upload a picture of one."),
    "blank picture": (lambda p: Image.new("RGB", (60, 60), "white").save(p), "No digit found (the image is blank"),
    "1x1 picture": (lambda p: Image.new("L", (1, 1), 0).save(p), "No digit found (the picture is only 1 x 1 pixels)."),
    "a text file": (lambda p: p.write_text("not an image"), "Your picture cannot be read: not an image (PNG, JPEG,"),
    "an SVG": (lambda p: p.write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'/>"), "cannot be read: not an image"),
    "truncated": (
        lambda p: p.write_bytes((PROJECT_DIR / "examples" / "two.png").read_bytes()[:400]),
        "Your picture cannot be read: a damaged or truncated image file.",
    ),  # fmt: skip
    "6000x6000": (
        lambda p: Image.new("L", (6000, 6000), 255).save(p),
        "Your picture cannot be read: too large: 6000 x 6000 pixels (limit 16,000,000).",
    ),  # fmt: skip
}


@pytest.fixture
def visitor(served, tmp_path):
    """A client of its own: a session that has uploaded nothing (the page keeps a visitor's last upload, and an
    empty canvas then leaves that upload's answer as it is)."""
    api = Client(served.local_url, verbose=False, download_files=str(tmp_path / "downloads"))
    yield api
    api.close()


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_every_outcome_has_its_own_words(visitor, tmp_path, outcome):
    client, (make, said) = visitor, OUTCOMES[outcome]
    if make in (None, "canvas"):
        value = canvas_value(tmp_path, draw=False) if make else None
        top, status, seen, c1, c3, *_ = client.predict(value, "checkpoints/lenet5.pt", api_name="/predict_canvas")
    else:
        make(tmp_path / "upload.png")
        top, status, seen, c1, c3, *_ = client.predict(
            handle_file(tmp_path / "upload.png"), "checkpoints/lenet5.pt", api_name="/predict"
        )
    assert top is None or top.get("label") is None
    assert said in status and "Error" not in status and "draw a digit (" not in status  # words, never a class name
    assert not seen and not c1 and not c3


def test_a_canvas_sent_through_the_api_that_cannot_be_read_has_the_pages_words(client, tmp_path):
    """/predict_canvas takes any file as the drawing: what is no picture, or far too large one, gets the page's
    own answer (Gradio decoded it first, and answered with a traceback on the console and a generic error)."""
    from test_digits import png_header

    (tmp_path / "text.png").write_text("not an image")
    cases = {
        tmp_path / "text.png": "Your picture cannot be read: not an image (PNG, JPEG,",
        png_header(tmp_path / "huge.png", 30_000, 30_000): "Your picture cannot be read: too large: 30000 x 30000 "
        "pixels (limit 16,000,000).",
    }
    for path, said in cases.items():
        value = {"background": None, "layers": [], "composite": handle_file(path)}
        top, status, seen, *_ = client.predict(value, "checkpoints/lenet5.pt", api_name="/predict_canvas")
        assert said in status and top is None or top.get("label") is None
        assert not seen


def test_what_cannot_be_a_checkpoint_is_named_without_being_read(tmp_path, capsys):
    """A folder of checkpoints holding a 20 GB file, a pipe, a folder named .safetensors and a link to itself: one
    line each, at once (the 20 GB file was read whole, 100 s, to a misleading torch message; the others were
    left out in silence)."""
    import os

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    save_weights(folder / "good.pt", LeNet5(), {})
    with open(folder / "zz.pt", "wb") as huge:
        huge.truncate(20 * 2**30)  # sparse: no disk space taken
    os.mkfifo(folder / "a.pt")
    (folder / "b.safetensors").mkdir()
    (folder / "c.pt").symlink_to("c.pt")
    offered = page.offered_checkpoints(folder / "good.pt", folder, "cpu", str)
    assert [o.key for o in offered] == [str(folder / "good.pt")]
    said = capsys.readouterr().out.splitlines()
    assert said == [
        f"not offered on the page: {folder / 'a.pt'}: not a regular file (a pipe, a device or a socket)",
        f"not offered on the page: {folder / 'c.pt'}: cannot be read (Too many levels of symbolic links)",
        f"not offered on the page: {folder / 'zz.pt'}: not a checkpoint (20,480 MB, where a LeNet-5 checkpoint is "
        "well under 50 MB)",
        f"not offered on the page: {folder / 'b.safetensors'}: a folder, not a .safetensors file",
    ]


def test_fifty_visitors_at_once_all_get_their_answers_and_the_page_writes_no_file(client, served):
    """The same upload 50 times at once: every answer arrives whole. Gradio stores each upload (and deletes it
    after app.CACHE_SECONDS); the page's own pictures travel inside its HTML, so it adds no file of its own."""
    from gradio.utils import get_upload_folder

    def files() -> int:
        return sum(1 for path in Path(get_upload_folder()).rglob("*") if path.is_file())

    seven = handle_file(PROJECT_DIR / "examples" / "seven.jpg")
    before = files()
    jobs = [client.submit(seven, "checkpoints/lenet5.pt", api_name="/predict") for _ in range(50)]
    answers = [job.result(timeout=300) for job in jobs]
    assert all(answer[0]["label"] == "7" for answer in answers)
    assert all(data_url_pixels(answer[2]).shape == (28, 28) for answer in answers)
    assert files() - before <= 50  # the uploads alone


def test_uploads_are_deleted_once_older_than_the_page_keeps_them(offered, tmp_path):
    short = page.build(offered[:1], [])
    short.launch(server_name="127.0.0.1", server_port=app.claim_port("127.0.0.1", 0), prevent_thread_lock=True,
                 quiet=True)  # fmt: skip
    stop = page.keep_uploads_for(short, 5.0)  # (long enough that a busy machine still finds it fresh)
    try:
        api = Client(short.local_url, verbose=False, download_files=str(tmp_path / "downloads"))
        api.predict(handle_file(PROJECT_DIR / "examples" / "seven.jpg"), offered[0].key, api_name="/predict")
        api.close()
        stored = [Path(file) for files in short.temp_file_sets for file in files]
        assert stored and all(path.exists() for path in stored)  # the upload, kept while it is fresh
        deadline = time.monotonic() + 30
        while any(path.exists() for path in stored) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(path.exists() for path in stored)
    finally:
        stop.set()
        short.close(verbose=False)


def png_bytes(image: Image.Image) -> bytes:
    """A picture as the browser's canvas sends it: the bytes of a PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_handlers_without_a_server(tiny_model):
    """Each input clears the other; a new checkpoint re-reads what is there."""
    from_upload, from_canvas, from_either = page.handlers({"m": tiny_model})
    seven = str(PROJECT_DIR / "examples" / "seven.jpg")
    blank = {"composite": png_bytes(Image.new("RGBA", (50, 50), (0, 0, 0, 0)))}
    skip = type(page.gradio().skip())
    assert all(isinstance(out, skip) for out in from_canvas(blank, seven, "m"))  # the upload stays
    assert from_either(blank, seven, "m")[2] == from_upload(seven, "m")[2]
    drawing = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
    ImageDraw.Draw(drawing).line([(25, 5), (25, 45)], fill=(0, 0, 0, 255), width=5)
    drawing = png_bytes(drawing)
    *drawn, uploaded = from_canvas({"composite": drawing}, seven, "m")
    assert uploaded is None and drawn[2] != from_upload(seven, "m")[2]
    assert from_either({"composite": drawing}, None, "m")[2] == drawn[2]
    assert page.IDLE in from_either(None, None, "m")[1]


def test_percentages_are_written_as_the_bars_write_them():
    assert [page.percent(p) for p in (0.999, 0.995, 0.994, 0.685, 0.0004)] == ["100%", "100%", "99%", "69%", "0%"]


# --- a real browser -------------------------------------------------------------------------------

DESKTOP, PHONE = (1280, 800), (390, 844)
THREE = [[(-60, -90), (0, -110), (55, -80), (50, -30), (0, -5)], [(0, -5), (55, 25), (60, 75), (0, 105), (-60, 85)]]
SEVEN = [[(-70, -100), (70, -100), (-10, 110)]]
ONE = [[(0, -110), (0, 110)]]
PANELS = ["#canvas", "#upload", "#picker", "#status", "#prediction", "#digit", "#c1", "#c3"]


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
        # --enable-unsafe-swiftshader: software WebGL without a deprecation warning (headless has no GPU)
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--enable-unsafe-swiftshader", "--hide-scrollbars", "--force-device-scale-factor=1",
                     f"--window-size={DESKTOP[0]},{DESKTOP[1]}", f"--user-data-dir={profile}"):  # fmt: skip
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
    wait.until(lambda d: d.execute_script("return document.querySelector('#status').hasAttribute('aria-live')"))
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
    """The text of the answer once it contains `expected` (or whatever it says after 30 s)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, 30, poll_frequency=0.05).until(lambda d: expected in status(d))
    except TimeoutException:
        pass
    return status(driver)


# Records, as it happens, whether the answer showed Gradio's busy state (its progress overlay, or the "pending"
# class): a short prediction's spinner is there for a few milliseconds, which polling can miss.
WATCH_BUSY = """
window.wasBusy = false;
new MutationObserver(() => {
  const answer = document.querySelector('#status');
  if (answer.querySelector('.pending, .wrap:not(.hide)') || answer.matches('.pending')) window.wasBusy = true;
}).observe(document.querySelector('#status'), {subtree: true, childList: true, attributes: true});
"""


def console(driver) -> list[str]:
    """Every warning and error the page logged since the last call."""
    return [f"{e['level']}: {e['message']}" for e in driver.get_log("browser") if e["level"] in ("WARNING", "SEVERE")]


def click(driver, selector: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, selector).click()


def upload(driver, path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "input[data-testid$=upload-button]").send_keys(str(path))  # as if chosen


def screenshot(driver, name: str, tmp_path: Path, size: tuple[int, int]) -> None:
    """Into $APP_SCREENSHOTS (scripts/make_docs.sh sets it to docs/figures/) or a temporary folder."""
    path = Path(os.environ.get("APP_SCREENSHOTS") or tmp_path) / name
    with atomic_output(path) as tmp:
        tmp.write_bytes(marked_png(driver.get_screenshot_as_png()))
    assert Image.open(path).size == size


def boxes(driver) -> dict[str, dict[str, float]]:
    return driver.execute_script(
        "return Object.fromEntries(arguments[0].map(s => [s, document.querySelector(s).getBoundingClientRect()"
        ".toJSON()]))",
        PANELS,
    )


def overlaps(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["left"] < b["right"] - 1
        and b["left"] < a["right"] - 1
        and a["top"] < b["bottom"] - 1
        and b["top"] < (a["bottom"] - 1)
    )


def test_drawing_with_the_mouse_in_chromium(served, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    canvas = open_page(browser, served.local_url, DESKTOP)
    wait = WebDriverWait(browser, 30, poll_frequency=0.05)
    assert status(browser) == page.IDLE
    browser.execute_script(WATCH_BUSY)
    draw(browser, canvas, THREE)  # a 3 in two strokes, as people write one
    assert "reads 3" in wait_for_status(browser, "reads 3")
    assert browser.execute_script("return window.wasBusy")  # the visitor saw that something was happening
    loaded = "const p = [...document.querySelectorAll('#digit img, #c1 img, #c3 img')]; return p.length == 3 && p.every(i => i.complete && i.naturalWidth > 0)"  # noqa: E501
    wait.until(lambda d: d.execute_script(loaded))  # the 28x28 and both feature-map grids
    inside = {name: box["bottom"] <= DESKTOP[1] and box["right"] <= DESKTOP[0] for name, box in boxes(browser).items()}
    assert all(inside.values()), inside  # canvas, answer, 28x28 and feature maps at once, no scrolling at 1280x800
    screenshot(browser, "app.png", tmp_path, DESKTOP)

    click(browser, "#canvas button[aria-label=Undo]")  # the lower stroke goes
    wait.until(lambda d: "reads 3" not in status(d))
    assert "reads" in status(browser)  # the upper stroke is still there, read as some other digit
    click(browser, "#canvas button[aria-label='Clear canvas']")
    assert wait_for_status(browser, page.IDLE) == page.IDLE
    for digit, strokes in (("7", SEVEN), ("1", ONE)):
        draw(browser, canvas, strokes)
        assert f"reads {digit}" in wait_for_status(browser, f"reads {digit}")
        click(browser, "#canvas button[aria-label='Clear canvas']")
        assert wait_for_status(browser, page.IDLE) == page.IDLE
    upload(browser, PROJECT_DIR / "examples" / "two.png")
    assert "reads 2" in wait_for_status(browser, "reads 2")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#yours img"))  # the uploaded picture, shown back
    draw(browser, canvas, SEVEN)  # the latest input wins: the upload goes
    assert "reads 7" in wait_for_status(browser, "reads 7")
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#yours img"))
    browser.find_elements(By.CSS_SELECTOR, "#examples .gallery-item")[3].click()  # examples/nine.png
    assert "reads 9" in wait_for_status(browser, "reads 9")
    assert console(browser) == []  # no warning and no error in all of that


def test_accessibility_audit_and_keyboard(served, browser):
    """axe-core's WCAG 2 A and AA rules and its best practices, on the page with an answer shown; then the
    page's own promises: a top heading, a named canvas, described pictures, an announced answer, and every
    control reached with the Tab key."""
    pytest.importorskip("selenium_axe_python", reason="pip install -r requirements.txt")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium_axe_python import Axe

    open_page(browser, served.local_url, DESKTOP)
    upload(browser, PROJECT_DIR / "examples" / "seven.jpg")
    assert "reads 7" in wait_for_status(browser, "reads 7")
    axe = Axe(browser)
    axe.inject()
    results = axe.run(options={"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "best-practice"]}})
    assert results["violations"] == [], axe.report(results["violations"])
    assert [h.text for h in browser.find_elements(By.TAG_NAME, "h1")] == ["LeNet-5: draw a digit"]
    assert "draw one digit" in browser.find_element(By.CSS_SELECTOR, "#canvas canvas").get_attribute("aria-label")
    assert all(img.get_attribute("alt") for img in browser.find_elements(By.CSS_SELECTOR, ".picture img"))
    assert browser.find_element(By.ID, "status").get_attribute("aria-live") == "polite"
    reached, body = set(), browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    for _ in range(40):
        where = "const e = document.activeElement; return e.closest('#upload, #picker, #examples, #canvas')?.id"
        reached.add(browser.execute_script(where))
        browser.switch_to.active_element.send_keys(Keys.TAB)
    assert {"upload", "picker", "examples", "canvas"} <= reached


def test_drawing_by_touch_on_a_phone(served, browser, tmp_path):
    canvas = open_page(browser, served.local_url, PHONE)
    draw(browser, canvas, SEVEN, touch=True)
    assert "reads 7" in wait_for_status(browser, "reads 7")
    placed = boxes(browser)
    assert all(box["left"] >= 0 and box["right"] <= PHONE[0] for box in placed.values()), placed
    crossing = [(a, b) for i, a in enumerate(PANELS) for b in PANELS[i + 1 :] if overlaps(placed[a], placed[b])]
    assert crossing == []  # no panel over another
    order = [placed[name]["top"] for name in ("#canvas", "#upload", "#status", "#prediction", "#digit", "#c1", "#c3")]
    assert order == sorted(order)  # one column: the canvas, then the upload, the answer, the 28x28, the maps
    inner = browser.execute_script(
        "const box = s => document.querySelector(s).getBoundingClientRect();"
        "return [box('#canvas label').right <= box('#canvas .top-panel').left,"
        "        box('#canvas .toolbar-wrap').right <= box('#canvas .pixi-target').left]"
    )
    assert inner == [True, True]  # the canvas's label clear of its buttons, its palette beside the drawing area
    screenshot(browser, "app_phone.png", tmp_path, PHONE)
    assert console(browser) == []


def stroke_to_prediction_seconds(driver, canvas) -> float:
    """From the end of the stroke that completes a 7 to the new answer."""
    from selenium.webdriver.support.ui import WebDriverWait

    click(driver, "#canvas button[aria-label='Clear canvas']")
    wait_for_status(driver, page.IDLE)
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
