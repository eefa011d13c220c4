import json
import re

import pytest
from conftest import assert_user_error
from PIL import Image, ImageDraw

from extras.digits import MAX_PIXELS, expand_paths
from predict import predict_paths


def draw_seven(size=(300, 200), paper="white", ink="black", mode="RGB", box=(150, 30, 120)):
    """A thick pen '7' somewhere off-centre on a canvas of its own size and colours."""
    image = Image.new(mode, size, paper)
    left, top, side = box
    ImageDraw.Draw(image).line(
        [(left, top), (left + side, top), (left + side * 0.4, top + side * 1.2)], fill=ink, width=14, joint="curve"
    )
    return image


def as_file(image: Image.Image, tmp_path, name: str):
    path = tmp_path / name
    image.save(path)
    return path


def bomb(path):
    """A PNG of 8,000 x 8,000 pixels: a few KB on disk, 256 MB once decoded to RGBA."""
    Image.new("1", (8_000, 8_000)).save(path)


def test_predict_cli_answers_the_good_images_and_reports_the_bad(cli, tmp_path, weights):
    good = as_file(draw_seven(), tmp_path, "seven.png")
    (tmp_path / "broken.png").write_text("garbage")
    Image.new("L", (30, 30), 0).save(tmp_path / "blank.png")
    bomb(tmp_path / "bomb.png")
    done = cli(
        "predict", good, tmp_path / "broken.png", tmp_path / "blank.png", tmp_path / "nope.png",
        tmp_path / "bomb.png", good, "--weights", weights, "--json", "--topk", "2", "--out", tmp_path / "show.png",
    )  # fmt: skip
    assert done.returncode == 1
    assert "4 of 6 images could not be classified" in done.stderr and "Traceback" not in done.stderr
    results = json.loads(done.stdout)
    assert [("error" in r) for r in results] == [False, True, True, True, True, False]
    assert len(results[0]["topk"]) == 2 and 0 <= results[0]["prediction"] <= 9
    assert sum(results[0]["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert results[2]["error"].startswith("no digit found") and results[3]["error"] == "no such file"
    assert results[4]["error"] == f"too large: 8000 x 8000 pixels (limit {MAX_PIXELS:,})"
    assert (tmp_path / "show.png").read_bytes()[:4] == b"\x89PNG"


def test_an_image_whose_name_is_not_utf8_is_drawn_with_its_name_escaped(cli, tmp_path, weights):
    """A file named with the byte 0xff (os.fsdecode: a surrogate) ended --out's figure in matplotlib's traceback."""
    import os

    name = os.fsdecode(b"\xff.png")
    as_file(draw_seven(), tmp_path, name)
    done = cli("predict", tmp_path / name, "--weights", weights, "--out", tmp_path / "show.png")
    assert done.returncode == 0 and (tmp_path / "show.png").exists(), done.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "{tmp}"], "--out {tmp} is a directory; give a file name"),
        (["--out", "{tmp}/seven.png"], "is input image 1, which this command reads; choose another name"),
        (["--out", "{tmp}/figure.jpg"], "the figure is a PNG; give a name ending in .png"),
        (["--topk", "0"], "argument --topk: must be an integer >= 1 and <= 10, got 0"),
        (["--weights", "{tmp}"], "is a directory; pass the checkpoint file"),
        (["--weights", "{tmp}/nan.pt"], "holds NaN or infinite weights"),
    ],
)
def test_predict_cli_user_errors(cli, tmp_path, weights, args, message):
    from test_helper import with_nan

    with_nan(tmp_path / "nan.pt")
    image = as_file(draw_seven(), tmp_path, "seven.png")
    args = [a.format(tmp=tmp_path) for a in args]
    assert_user_error(cli("predict", image, "--weights", weights, *args), message.format(tmp=tmp_path))


def test_predict_paths_keeps_the_order_and_only_what_it_needs(tmp_path, tiny_model):
    for i, kwargs in enumerate([{}, {"paper": "black", "ink": "white"}]):
        as_file(draw_seven(**kwargs), tmp_path, f"{i}.png")
    paths = expand_paths([tmp_path])
    results = predict_paths(tiny_model.eval(), paths, topk=3, keep_images=False)
    assert [r["path"] for r in results] == [str(tmp_path / "0.png"), str(tmp_path / "1.png")]
    assert all(len(r["topk"]) == 3 and r["grey"] is None and r["digit"].shape == (28, 28) for r in results)


def test_a_pipe_a_device_or_a_broken_link_in_a_folder_is_reported_not_skipped(cli, tmp_path, weights):
    """They were left out of a folder's images without a word: each is now that input's error (exit status 1)."""
    import os

    folder = tmp_path / "photos"
    folder.mkdir()
    as_file(draw_seven(), folder, "a.png")
    (folder / "z.png").symlink_to("/dev/zero")
    (folder / "y.png").symlink_to(tmp_path / "gone.png")
    os.mkfifo(folder / "f.png")
    (folder / "sub.png").mkdir()  # a folder named like an image is no image
    done = cli("predict", folder, "--weights", weights)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"{folder / 'a.png'}: ") and lines[1:] == [
        f"{folder / 'f.png'}: error: not a file", f"{folder / 'y.png'}: error: no such file",
        f"{folder / 'z.png'}: error: not a file",
    ]  # fmt: skip


def run_predict(*args, **popen):
    import subprocess
    import sys

    from conftest import PROJECT_DIR

    return subprocess.run([sys.executable, "predict.py", *map(str, args)], cwd=PROJECT_DIR, text=True, timeout=300,
                          **{"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen})  # fmt: skip


def test_json_results_that_cannot_be_written_are_an_error(tmp_path, weights):
    """`predict.py --json > /dev/full`: one line, a non-zero status, and the figure written before it."""
    image = as_file(draw_seven(), tmp_path, "seven.png")
    with open("/dev/full", "w") as full:
        done = run_predict(image, "--weights", weights, "--json", "--out", tmp_path / "show.png", stdout=full)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == "error: cannot write the results to stdout: No space left on device"
    assert "Traceback" not in done.stderr and (tmp_path / "show.png").is_file()


def test_names_the_terminal_cannot_show_are_escaped(tmp_path, weights):
    """PYTHONIOENCODING=ascii (or a C locale): "ü数字.png" is printed escaped; the results and the figure stay."""
    import os

    image = as_file(draw_seven(), tmp_path, "ü数字.png")
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    done = run_predict(image, "--weights", weights, "--out", tmp_path / "show.png", env=env)
    assert done.returncode == 0, done.stderr
    assert f"{tmp_path}/\\xfc\\u6570\\u5b57.png: " in done.stdout and "Traceback" not in done.stderr
    assert (tmp_path / "show.png").is_file()


def test_an_image_name_too_long_for_the_file_system_is_that_images_error(cli, tmp_path, weights):
    """Errno 36 (ENAMETOOLONG) is a per-file error as a missing file is, not a traceback; the others are classified."""
    good = as_file(draw_seven(), tmp_path, "seven.png")
    long = tmp_path / ("x" * 300 + ".png")
    done = cli("predict", good, long, "--weights", weights)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"{long}: error: cannot be read: file name too long" in done.stdout.splitlines()
    assert done.stdout.startswith(f"{good}: ") and "1 of 2 images could not be classified" in done.stderr


@pytest.mark.parametrize(
    "names, message",
    [
        (["nothere.png"], "error: {tmp}/nothere.png: no such file"),
        (["x" * 300 + ".png"], "error: {tmp}/" + "x" * 300 + ".png: cannot be read: file name too long"),
        (["a.png", "b.png"], "error: none of the 2 images could be classified; the first, {tmp}/a.png: no such file"),
    ],
    ids=["one-missing", "one-name-too-long", "two-missing"],
)
def test_no_image_classified_is_a_user_error_with_its_reason_on_stderr(cli, tmp_path, weights, names, message):
    """Nothing done: exit 2 and the reason on stderr, not exit 1 with the reason on stdout only."""
    done = cli("predict", *[tmp_path / name for name in names], "--weights", weights)
    assert_user_error(done, message.format(tmp=tmp_path))
    assert done.stderr == message.format(tmp=tmp_path) + "\n" and done.stdout == ""


def test_results_on_a_closed_stdout_are_an_error_when_stdout_is_the_only_output(tmp_path, weights):
    """`predict.py one.png >&-`: the results are the product; lost, they are one line and status 2, as with --json.
    With --out the figure is the product, and a closed stdout only silences the text."""
    import os

    image = as_file(draw_seven(), tmp_path, "seven.png")
    done = run_predict(image, "--weights", weights, preexec_fn=lambda: os.close(1))
    assert done.returncode == 2 and done.stderr == "error: cannot write the results to stdout: it is closed\n"
    done = run_predict(image, "--weights", weights, "--out", tmp_path / "show.png", preexec_fn=lambda: os.close(1))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "show.png").read_bytes()[:4] == b"\x89PNG"


def test_out_replaces_its_own_figure_but_never_a_picture_of_the_users(cli, tmp_path, weights):
    """predict.py --out holiday.png replaced the user's photo with the figure: refused, the photo as it was. The
    figure of an earlier run is replaced, as ever."""
    seven = as_file(draw_seven(), tmp_path, "seven.png")
    ours, photo = tmp_path / "figure.png", as_file(draw_seven(ink="red"), tmp_path, "holiday.png")
    for _ in range(2):
        assert cli("predict", seven, "--weights", weights, "--out", ours).returncode == 0
    before = photo.read_bytes()
    done = cli("predict", seven, "--weights", weights, "--out", photo)
    assert_user_error(done, f"--out {photo} exists and is not a figure this program wrote; move it")
    assert photo.read_bytes() == before


def test_a_file_name_with_a_line_break_stays_on_its_results_line(cli, tmp_path, weights):
    """One line per image, as a script reading the output expects: "a\\nb.png" is shown escaped, good or bad."""
    good = as_file(draw_seven(), tmp_path, "a\nb.png")
    bad = tmp_path / "c\nd.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n")  # a PNG cut short
    done = cli("predict", good, bad, "--weights", weights)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and re.match(re.escape(f"{tmp_path}/a\\nb.png: ") + r"\d \(", lines[0])
    assert lines[1].startswith(f"{tmp_path}/c\\nd.png: error: ")


def test_a_backend_named_by_the_environment_does_not_stop_the_figure(tmp_path, weights):
    """Jupyter sets MPLBACKEND to its inline backend, and a misspelt one fails matplotlib's own import: the figure
    is a file, drawn with Agg whatever the environment says."""
    import os

    image = as_file(draw_seven(), tmp_path, "seven.png")
    env = {**os.environ, "MPLBACKEND": "bogus"}
    done = run_predict(image, "--weights", weights, "--out", tmp_path / "show.png", env=env)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert (tmp_path / "show.png").read_bytes()[:4] == b"\x89PNG"
