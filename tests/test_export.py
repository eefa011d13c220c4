"""export.py, the command: its flags and its --out, checked before any work; a folder replaced only when it
holds an earlier export of this program's."""

import shlex

import pytest
from conftest import assert_user_error


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "{tmp}"], "--out {tmp} is a directory"),
        (["--verify-images", "1"], "argument --verify-images: must be an integer >= 2 and <= 10000, got 1"),
        (["--weights", "{tmp}/none.pt"], "no such checkpoint"),
        (["--format", "tflite"], "invalid choice: 'tflite'"),
        (["--out", "{tmp}/model.pt"], "is the checkpoint given as --weights, which this command reads"),
        (["--out", "{tmp}/lenet5.json"], "a onnx export should not be named .json"),
        (["--format", "torchscript", "--out", "{tmp}/lenet5.onnx"], "a torchscript export should not be named .onnx"),
        (["--out", "{tmp}/m.safetensors"], "a onnx export should not be named .safetensors"),  # as safetensors refuses
        (["--format", "torchscript", "--out", "{tmp}/m.safetensors"], "should not be named .safetensors"),  # others'
    ],
)
def test_export_cli_user_errors(cli, tmp_path, weights, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    done = cli("export", "--weights", weights, "--data-dir", tmp_path, "--no-download", *args)
    assert_user_error(done, message.format(tmp=tmp_path))
    assert not list(tmp_path.glob("*.onnx*"))


def test_hub_export_replaces_an_earlier_one_but_not_other_files(tmp_path, weights, cli):
    folder = tmp_path / "hub"
    for _ in range(2):
        done = cli("export", "--weights", weights, "--format", "hub", "--out", folder, "--data-dir", tmp_path,
                   "--no-download", "--verify-images", "4")  # fmt: skip
        assert done.returncode == 0, done.stderr
    (folder / "notes.txt").write_text("mine")
    done = cli("export", "--weights", weights, "--format", "hub", "--out", folder, "--no-download")
    assert_user_error(done, "holds files that are not an earlier export of this program's (notes.txt); give a new")
    assert (folder / "notes.txt").read_text() == "mine"  # (named alone: the export's own files were named too)


@pytest.mark.parametrize("changed", ["README.md", "config.json", "model.safetensors"])
def test_a_hub_export_whose_files_the_user_changed_is_not_replaced(tmp_path, weights, cli, changed):
    """An edit appended to the export's README.md was lost to the next export: each file's SHA-256, recorded at
    export time, says what was changed since, and the folder is left as it is."""
    folder = tmp_path / "hub"
    args = ["--weights", weights, "--format", "hub", "--out", folder, "--data-dir", tmp_path / "no-mnist",
            "--no-download", "--verify-images", "4"]  # fmt: skip
    assert cli("export", *args).returncode == 0
    with open(folder / changed, "ab") as file:
        file.write(b"\n")  # (config.json is still valid JSON, model.safetensors still loads)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    done = cli("export", *args)
    assert_user_error(done, f"--out {folder}: {changed} was changed since this program wrote it; move it or choose")
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


@pytest.mark.parametrize("mischief", ["a folder of the user's", "a link to one", "the earlier export edited"])
def test_a_hub_folder_put_at_out_or_changed_during_the_export_is_kept(tmp_path, weights, cli, monkeypatch, mischief):
    """The folder check ran at the start only: a folder of the user's put at --out while the export ran, or a link to
    one, or an edit to the earlier export there, was replaced whole (rc 0). Now each is kept, in one line."""
    import dataclasses

    from extras import exports

    folder, mine = tmp_path / "hub", tmp_path / "mine"
    args = ["--weights", weights, "--format", "hub", "--out", folder, "--data-dir", tmp_path / "no-mnist",
            "--no-download", "--verify-images", "4"]  # fmt: skip
    if mischief == "the earlier export edited":
        assert cli("export", *args).returncode == 0
    hub = exports.FORMATS["hub"]

    def meanwhile(*written):
        if mischief == "the earlier export edited":
            with open(folder / "README.md", "a") as card:
                card.write("my edit\n")
        else:
            mine.mkdir()
            (mine / "notes.txt").write_text("mine")
            (folder.symlink_to if mischief == "a link to one" else mine.rename)(mine if mischief == "a link to one"
                                                                                else folder)  # fmt: skip
        return hub.write(*written)

    monkeypatch.setitem(exports.FORMATS, "hub", dataclasses.replace(hub, write=meanwhile))
    done = cli("export", *args)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    said = "became a link to" if mischief == "a link to one" else "was put there or changed while this command ran"
    assert said in done.stderr, done.stderr
    if mischief == "the earlier export edited":
        assert (folder / "README.md").read_text().endswith("-->\nmy edit\n")
        assert sorted(path.name for path in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    else:
        assert [(path.name, path.read_text()) for path in folder.iterdir()] == [("notes.txt", "mine")]


@pytest.mark.parametrize("fmt, name", [("onnx", "y.onnx"), ("torchscript", "y.pt"), ("safetensors", "y.safetensors")])
@pytest.mark.parametrize("ending", ["/", "/.", "/.."])
def test_a_file_formats_out_that_names_a_folder_is_refused(tmp_path, weights, cli, fmt, name, ending):
    """--out y.onnx/ wrote a file named y.onnx: refused as main.py and predict.py refuse it, nothing written."""
    out = f"{tmp_path / name}{ending}"
    done = cli("export", "--weights", weights, "--format", fmt, "--out", out, "--no-download")
    assert_user_error(done, f"argument --out: {out!r} names a folder; give the name of a file in it")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_the_publish_command_quotes_the_hub_folder(tmp_path, weights, cli):
    """A hub --out with spaces (and the slash a shell completes a folder with) printed `hf upload ... sp ace/my hub .`
    unquoted: the folder is one word of the command now."""
    folder = tmp_path / "sp ace" / "my hub"
    done = cli("export", "--weights", weights, "--format", "hub", "--out", f"{folder}/", "--data-dir",
               tmp_path / "no-mnist", "--no-download", "--verify-images", "4")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"hf upload USER/lenet5-mnist {shlex.quote(str(folder))} .\n" in done.stdout
    (line,) = [line for line in done.stdout.splitlines() if "hf upload" in line]
    assert shlex.split(line.split(": ", 1)[1]) == ["hf", "upload", "USER/lenet5-mnist", str(folder), "."]
    assert folder.is_dir()


@pytest.mark.parametrize(
    "fmt, out, message",
    [
        ("safetensors", "lenet5.pt", "a safetensors export is named *.safetensors"),
        ("hub", "model.pt", "is the checkpoint given as --weights, which this command reads"),
        ("hub", "file.txt", "is a file; a hub export is a folder"),
    ],
)
def test_export_refuses_a_wrong_out(tmp_path, weights, cli, fmt, out, message):
    (tmp_path / "file.txt").write_text("x")
    done = cli("export", "--weights", weights, "--format", fmt, "--out", tmp_path / out, "--no-download")
    assert_user_error(done, message)


def test_a_folder_with_the_hub_file_names_but_not_ours_is_left_alone(tmp_path, weights, cli):
    """Only a folder that holds an earlier export of this program's is replaced: file names alone prove nothing."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "README.md").write_text("# my notes")
    (folder / "config.json").write_text('{"architecture": "LeNet5"}')
    done = cli("export", "--weights", weights, "--format", "hub", "--out", folder, "--no-download")
    assert_user_error(done, "holds files that are not an earlier export of this program's")
    assert (folder / "README.md").read_text() == "# my notes" and sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json"
    ]  # fmt: skip
    args = ["--weights", weights, "--format", "hub", "--out", folder, "--no-download", "--verify-images", "4"]
    (folder / "README.md").unlink()
    (folder / "config.json").unlink()
    assert cli("export", *args, "--data-dir", tmp_path).returncode == 0  # an empty folder: ours now
    card = folder / "README.md"
    card.write_text(card.read_text().replace("<!-- written by", "<!-- edited by"))  # the user's card now
    assert_user_error(cli("export", *args, "--data-dir", tmp_path), "README.md was changed since this program wrote")
