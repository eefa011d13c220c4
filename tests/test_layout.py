"""The package's shape, read from the code's own imports: the root holds the six modules the mission names
and the commands a user runs; dependencies point one way, down these layers, with no cycle; the core
imports no optional feature; nothing edits sys.path; every link in the README resolves."""

import ast
import re
from pathlib import Path

from conftest import PROJECT_DIR

SIX = {"data", "LeNet5", "train", "eval", "helper", "main"}
COMMANDS = {"main", "eval", "predict", "export", "app"}  # each runs as `python NAME.py`
# Lower layers never import higher ones. A folder is one layer; the core is layers 0 to 5.
LAYERS = [
    {"lecun1998"},  # the 1998 paper's layers, loss and optimizer
    {"LeNet5"},  # the model
    {"support"},  # what the six lean on
    {"data", "helper"},
    {"train"},
    {"eval"},
    {"extras"},  # optional features, each a thin layer over the core
    {"main", "predict", "export", "app"},  # the commands
    {"scripts"},  # measurement and documentation scripts
]
CORE = set().union(*LAYERS[:6])


def modules() -> dict[str, Path]:
    """Every module of the package, by its import name."""
    found = {path.stem: path for path in PROJECT_DIR.glob("*.py")}
    for folder in ("lecun1998", "support", "extras", "scripts"):
        found |= {f"{folder}.{path.stem}": path for path in (PROJECT_DIR / folder).glob("*.py")}
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The package's modules that `path` imports, anywhere in it (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found - {path.stem}


def layer(module: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if module.split(".")[0] in names)


GRAPH = {name: imports(path, set(modules())) for name, path in modules().items()}


def test_the_root_holds_the_six_modules_and_the_commands():
    root = {path.stem for path in PROJECT_DIR.glob("*.py")}
    assert root == SIX | COMMANDS
    for name in COMMANDS:
        assert 'if __name__ == "__main__":' in (PROJECT_DIR / f"{name}.py").read_text(), name
    assert all(module in GRAPH for layer_ in LAYERS for module in layer_ if module in root)


def test_dependencies_point_down_the_layers():
    upward = [(a, b) for a, targets in GRAPH.items() for b in targets if layer(b) > layer(a)]
    assert upward == []


def test_the_core_imports_no_optional_feature_nor_a_command():
    core = {name for name in GRAPH if name.split(".")[0] in CORE}
    assert {"train", "data", "helper", "eval", "LeNet5", "support.cli"} <= core
    reached = {b for a in core for b in GRAPH[a]}
    assert not {name for name in reached if name.split(".")[0] in {"extras", "scripts", "main", "predict", "export"}}


def test_no_import_cycle():
    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in GRAPH[node]:
                if nxt == start:
                    return path
                if nxt not in path:
                    stack.append((nxt, path + [nxt]))
        return None

    assert [cycle for name in GRAPH if (cycle := cycle_from(name))] == []


def test_the_layout_test_sees_a_cycle_and_an_upward_import(tmp_path):
    """The checks above read real imports: a module importing up, or two importing each other, are found."""
    (tmp_path / "a.py").write_text("import b\nfrom extras import tensorboard_log\n")
    (tmp_path / "b.py").write_text("def f():\n    import a\n")
    assert imports(tmp_path / "a.py", {"b", "extras.tensorboard_log"}) == {"b", "extras.tensorboard_log"}
    assert imports(tmp_path / "b.py", {"a"}) == {"a"}


def test_each_module_has_its_test_file():
    """Tests mirror the modules: tests/test_NAME.py for NAME.py and FOLDER/NAME.py (lecun1998, support, extras);
    the scripts' own tests in tests/test_scripts.py unless they have a file of their own."""
    tests = {path.stem.lower() for path in (PROJECT_DIR / "tests").glob("test_*.py")}
    mirrored = [name for name in modules() if not name.startswith("scripts.") and not name.endswith("__init__")]
    missing = [name for name in mirrored if f"test_{name.split('.')[-1].lower()}" not in tests]
    assert missing == [] and "test_scripts" in tests


def test_nothing_edits_sys_path():
    code = [path for path in modules().values()] + list((PROJECT_DIR / "tests").glob("*.py"))
    assert [str(path) for path in code if "sys.path." in path.read_text() and path.name != "test_layout.py"] == []


def test_every_link_in_the_readme_and_docs_resolves():
    pages = [PROJECT_DIR / "README.md", *(PROJECT_DIR / "docs").glob("*.md")]
    broken = []
    for page in pages:
        targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
        local = [t for t in targets if not re.match(r"[a-z]+:", t)]
        assert local or page.name != "README.md", "the README links to the project's files"
        broken += [f"{page.name}: {t}" for t in local if not (page.parent / t).exists()]
    assert broken == []


def test_the_readme_stays_a_guide():
    readme = (PROJECT_DIR / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for command in ("python main.py\n", "python eval.py --weights checkpoints/lenet5.pt\n", "pytest tests\n"):
        assert command in readme, command  # the mission's three commands, verbatim
