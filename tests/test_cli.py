"""support/cli.py: flag parsing, closed pipes, which process speaks, and the exit-status contract."""

import argparse
import os
import re

from support.cli import (
    CliParser,
    UserError,
    _SurvivesClosedPipe,
    add_device_flag,
    add_json_flag,
    add_weights_flag,
    number,
    run_cli,
)

import pytest
from conftest import PROJECT_DIR, assert_user_error, run_script, write_idx_dir


@pytest.mark.parametrize(
    "kind, low, high, low_open, text, ok",
    [
        (int, 1, None, False, "1", True),
        (int, 1, None, False, "0", False),
        (int, 1, None, False, "-1", False),
        (int, 1, None, False, "2.5", False),
        (int, 1, 100, False, "101", False),
        (int, 1, 100, False, "1" + "0" * 400, False),  # no OverflowError
        (float, 0, None, True, "1e-3", True),
        (float, 0, None, True, "0", False),
        (float, 0, None, True, "nan", False),
        (float, 0, None, True, "inf", False),
        (float, 0, 0.999, False, "1", False),
        (float, 0, None, False, "abc", False),
        (int, 1, None, False, "1_000", False),  # one rule: plain decimal digits, nothing else
        (int, 1, None, False, "\u0661\u0662", False),  # Arabic-Indic digits
        (int, 1, None, False, "0x10", False),
        (float, 0, None, False, "1_0.5", False),
        (float, 0, None, False, "+.5e1", True),
        (int, 0, None, False, " 7 ", True),
        (float, 0, None, True, "1e-50", False),  # > 0, but 0 in float32, where training computes
        (float, 0, None, True, "7e-46", False),  # rounds to 0 in float32
        (float, 0, None, True, "1e-45", True),  # float32's smallest positive value (a subnormal)
        (float, 0, None, False, "1e-50", True),  # >= 0 allows 0 anyway
    ],
)
def test_number_validates_range_and_finiteness(kind, low, high, low_open, text, ok):
    parse = number(kind, low, high, low_open)
    if ok:
        assert parse(text) == kind(text.strip())
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="must be"):
            parse(text)


def test_closed_pipe_silences_output_instead_of_raising():
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w", buffering=1)
    os.close(read_end)  # the reader has gone
    out = _SurvivesClosedPipe(stream)
    out.write("first line\n")  # would raise BrokenPipeError on the raw stream
    out.flush()
    assert out.gone and out.write("more\n") == 5
    stream.close()


@pytest.mark.parametrize(
    "everywhere, rank, printed",
    [(False, "1", "error: rank 1: bad\n"), (True, "1", ""), (True, "0", "error: bad\n"), (False, None, "error: bad\n")],
)
def test_user_errors_under_torchrun_are_said_once(monkeypatch, capsys, everywhere, rank, printed):
    """Errors every process raises alike are reported by rank 0 alone; any other by the process it hit."""
    if rank is not None:
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", "2")

    def fails(argv):
        err = UserError("bad")
        err.everywhere = everywhere
        raise err

    with pytest.raises(SystemExit) as exit_:
        run_cli(fails, [])
    assert exit_.value.code == 2 and capsys.readouterr().err == printed


ENTRY_POINTS = ("main", "eval", "predict", "export", "app", "scripts.bench")


def help_text(cli, module: str) -> str:
    done = cli(module, "--help")
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help_shows_only_meaningful_defaults(cli, module):
    text = help_text(cli, module)
    assert "(default: None)" not in text and "(default: False)" not in text and "==SUPPRESS==" not in text


def shared_help(add_flag) -> str:
    parser = CliParser(None)
    add_flag(parser)
    return " ".join(parser._actions[-1].help.split())


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_shared_flags_mean_the_same_everywhere(cli, module):
    """--device, --weights, --json, --report-dir and --limit: one spelling and one help text wherever they appear."""
    text = " ".join(help_text(cli, module).split())
    assert "--device {auto,cpu,cuda,mps,xpu}" in text and shared_help(add_device_flag) in text  # every one runs a model
    for flag, add_flag in (("--weights", add_weights_flag), ("--json", add_json_flag)):
        assert flag not in text or shared_help(add_flag) in text or (module == "app" and flag == "--weights")
    assert ("--report-dir" in text) == (module in ("main", "eval"))
    assert ("--limit" in text) == (module in ("main", "eval"))
    assert "--limit" not in text or "use only the first N images of each MNIST split the command reads" in text


def test_exit_statuses_are_the_readme_table():
    """The README's table and cli.py's constants say the same."""
    from conftest import PROJECT_DIR

    from support import cli as contract

    readme = (PROJECT_DIR / "README.md").read_text()
    section = readme.split("## Exit statuses", 1)[1].split("\n## ", 1)[0]  # that section's table alone
    rows = [line for line in section.splitlines() if re.match(r"\| \d+ \|", line)]
    statuses = [int(row.split("|")[1]) for row in rows]
    constants = {getattr(contract, name) for name in dir(contract) if name.startswith("EXIT_")}
    assert sorted(statuses) == sorted(constants) == [0, 1, 2, 130]
    interrupted = next(row for row in rows if row.startswith("| 130 |"))
    assert all(name in interrupted for name in ("Ctrl-C", "SIGTERM", "SIGHUP", "SIGQUIT"))


def test_a_full_or_missing_stdout_silences_output_instead_of_raising():
    with open("/dev/full", "w", buffering=1) as full:  # every write: ENOSPC
        out = _SurvivesClosedPipe(full)
        out.write("a line\n")
        out.flush()
        assert out.gone
    missing = _SurvivesClosedPipe(None)  # `python eval.py >&-`: Python has no sys.stdout at all
    assert missing.gone and missing.write("x\n") == 2
    missing.flush()


def test_out_of_memory_is_one_line_from_the_rank_it_hit(monkeypatch, capsys):
    import torch

    def out_of_memory(argv):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")  # as torchrun sets them for the second of two processes
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exit_:
        run_cli(out_of_memory, [])
    expected = "error: rank 1: out of memory on the device; use a smaller --batch-size or --device cpu\n"
    assert exit_.value.code == 2 and capsys.readouterr().err == expected


def test_a_rank_left_in_the_environment_of_a_plain_process_means_nothing(monkeypatch, capsys):
    """RANK=1 outside torchrun: a bad flag is still said (one answer to "which process speaks": cli.speaks)."""
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setenv("RANK", "1")
    parser = CliParser("test")
    parser.add_argument("--n", type=number(int, 1))
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--n", "0"])
    assert exit_.value.code == 2 and "argument --n: must be an integer >= 1" in capsys.readouterr().err


def test_an_lr_that_is_0_in_float32_is_refused(cli):
    """--lr must be > 0: 1e-50 is, but training computes in float32, where it is 0 (and --lr 0 is refused)."""
    done = cli("main", "--lr", "1e-50")
    assert_user_error(done, "argument --lr: must be a finite number > 0 in float32 (training's precision)")


# A stop as the program ends: after its last line, while its output is flushed and while the libraries' exit
# hooks run. Python gives the signals back to their defaults in its teardown (143), and a KeyboardInterrupt
# there is a traceback from a flush, "Exception ignored in atexit callback", or SIGABRT inside torch's C++.
STOP_AS_IT_ENDS = {
    "in an exit hook": "atexit.register(stop)  # registered first: runs last, after torch's own\n",
    "in the last flush": (  # (the process's own, in end_process: predict.py flushes its results itself before)
        "def ending():\n"
        "    frame = sys._getframe()\n"
        "    while frame is not None and frame.f_code.co_name != 'end_process':\n"
        "        frame = frame.f_back\n"
        "    return frame is not None\n"
        "class StopsOnFlush:\n"
        "    def __init__(self, stream): self.stream = stream\n"
        "    def write(self, text): return self.stream.write(text)\n"
        "    def flush(self):\n"
        "        if ending(): stop()\n"
        "        self.stream.flush()\n"
        "sys.stdout = StopsOnFlush(sys.stdout)\n"
    ),
}


@pytest.mark.parametrize("when", STOP_AS_IT_ENDS)
def test_a_stop_as_the_program_ends_is_130_and_one_line(tmp_path, weights, when):
    """predict.py run as the program (runpy, as `python predict.py` runs it), a SIGTERM as it ends: 130, one line."""
    script = tmp_path / "stop_as_it_ends.py"
    script.write_text(
        "import atexit, os, runpy, signal, sys\n"
        "sent = []\n"
        "def stop():\n"
        "    if not sent:\n"
        "        sent.append(os.kill(os.getpid(), signal.SIGTERM))\n"
        "        print('went on after the stop', file=sys.stderr)\n"
        + STOP_AS_IT_ENDS[when]
        + f"sys.argv = ['predict.py', {str(PROJECT_DIR / 'examples' / 'one.png')!r}, '--weights', {str(weights)!r}]\n"
        f"runpy.run_path({str(PROJECT_DIR / 'predict.py')!r}, run_name='__main__')\n"
    )
    done = run_script(str(script), env={"PYTHONPATH": str(PROJECT_DIR)})  # (the project's modules, as python X.py)
    assert done.returncode == 130, done.stderr
    assert "one.png: " in done.stdout
    assert done.stderr == "went on after the stop\n\ninterrupted\n"  # no traceback, no "Exception ignored"


# Every flag and positional of every command: '' (an unset shell variable, `--out "$OUT"`) as a path is the
# current folder: main.py wrote its report there, predict.py read every image there, --out '' was a traceback.
EMPTY_VALUES = [
    ("main", ["--out", ""], "argument --out"),
    ("main", ["--report-dir", ""], "argument --report-dir"),
    ("main", ["--tensorboard="], "argument --tensorboard"),
    ("main", ["--data-dir", ""], "argument --data-dir"),
    ("main", ["--resume", ""], "argument --resume"),
    ("eval", ["--weights", ""], "argument --weights"),
    ("predict", [""], "argument images"),
    ("predict", [str(PROJECT_DIR / "examples"), "--out", ""], "argument --out"),
    ("export", ["--out", ""], "argument --out"),
]
SAFE_FLAGS = {  # where the commands would otherwise read and write: all in the test's own folder
    "main": {"--data-dir": "{tmp}/none", "--out": "{tmp}/o/m.pt", "--report-dir": "{tmp}/r", "--no-download": None},
    "eval": {"--data-dir": "{tmp}/none", "--report-dir": "{tmp}/r", "--no-download": None},
    "predict": {"--weights": "{tmp}/none.pt"},
    "export": {"--data-dir": "{tmp}/none", "--weights": "{tmp}/none.pt", "--no-download": None},
}


@pytest.mark.parametrize("module, args, argument", EMPTY_VALUES)
def test_an_empty_value_is_refused_for_every_argument(cli, tmp_path, monkeypatch, module, args, argument):
    monkeypatch.chdir(tmp_path)  # where '' points: nothing may be read or written there
    tested = {arg.split("=")[0] for arg in args}
    safe = [(flag, value) for flag, value in SAFE_FLAGS[module].items() if flag not in tested]
    safe_args = [arg.format(tmp=tmp_path) for pair in safe for arg in pair if arg is not None]
    done = cli(module, *safe_args, *args)
    assert_user_error(done, f"{argument}: an empty value (an unset shell variable?); give ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("module, flag, name", [("eval", "--weights", "a.pt"), ("main", "--data-dir", "mnist")])
def test_a_name_too_long_for_the_file_system_is_one_line_wherever_it_is_given(cli, tmp_path, module, flag, name):
    """An input's name of 300 bytes (the file systems take 255): the system's ENAMETOOLONG, wherever it comes
    from, is one line naming the path (run_cli), not a traceback."""
    path = tmp_path / ("a" * (300 - len(name)) + name)
    others = ["--out", tmp_path / "o" / "m.pt"] if module == "main" else []
    done = cli(module, flag, path, *others, "--report-dir", tmp_path / "r", "--no-download")
    assert_user_error(done, f"error: {path}: its name is 300 bytes long, and the file system takes at most 255")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("module", ["main", "predict", "scripts.peer"])
@pytest.mark.parametrize("ending", ["/", "/.", "/.."])
def test_an_out_that_names_a_folder_is_refused_not_turned_into_a_file(cli, tmp_path, module, ending):
    """--out runs/x/ (a slash at the end, as shells complete folder names) wrote a file named x: refused now,
    nothing written."""
    out = f"{tmp_path / 'x'}{ending}"
    given = {"main": ["--data-dir", tmp_path / "none"], "predict": ["image.png"], "scripts.peer": []}[module]
    done = cli(module, *given, "--out", out)
    assert_user_error(done, f"argument --out: {out!r} names a folder; give the name of a file in it")
    assert list(tmp_path.iterdir()) == []


def test_an_error_that_quotes_a_name_with_a_line_break_stays_one_line(cli, tmp_path):
    weights = tmp_path / "two\nlines.pt"
    done = cli("eval", "--weights", weights, "--data-dir", tmp_path / "none", "--no-download")
    assert_user_error(done, "two\\nlines.pt")


def test_a_broken_library_is_one_line_that_names_it_and_a_bug_of_ours_keeps_its_traceback(tmp_path, weights):
    """An ImportError raised inside an installed library (or a library not installed) is the install to fix: one
    line naming it. One raised by this project's own code is a bug: its traceback stays."""
    shim = tmp_path / "shim" / "sklearn"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("import a_module_nobody_installed\n")
    data = write_idx_dir(tmp_path / "mnist")
    done = run_script("eval.py", "--weights", str(weights), "--data-dir", str(data), "--allow-custom-data",
                      "--report-dir", str(tmp_path / "report"), env={"PYTHONPATH": str(shim.parent)})  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: cannot import sklearn (ModuleNotFoundError: No module named 'a_module_")
    assert done.stderr.rstrip().endswith("reinstall it: pip install -r requirements.txt")
    (shim.parent / "onnx").mkdir()  # torch's exporter importing a broken onnx: onnx is named, not torch
    (shim.parent / "onnx" / "__init__.py").write_text('raise ImportError("simulated")\n')
    done = run_script("export.py", "--weights", str(weights), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                      env={"PYTHONPATH": str(shim.parent)})  # fmt: skip
    assert done.returncode == 2 and done.stderr.startswith("error: cannot import onnx (ImportError: simulated)")

    from support.cli import broken_library

    with pytest.raises(ImportError) as ours:
        from support import not_a_module_of_ours  # noqa: F401
    assert broken_library(ours.value) is None
    with pytest.raises(ImportError) as missing:
        import a_module_nobody_installed  # noqa: F401
    assert broken_library(missing.value) == "a_module_nobody_installed"
