"""dvc.yaml declares, for each stage, exactly the pico modules its script imports (directly or not), so a
code change reruns the stages it touches and no others."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO


def module_file(module: str) -> Path | None:
    base = REPO / module.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pico":
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            out |= {".".join(parts[:i]) for i in range(2, len(parts) + 1) if parts[0] == "pico"}
    return {m for m in out if module_file(m)}


def data_files(path: Path) -> set[str]:
    """Files a module ships beside itself and reads (`Path(__file__).with_name("...")`)."""
    names = re.findall(r'Path\(__file__\)\.with_name\("([^"]+)"\)', path.read_text())
    return {str((path.parent / name).relative_to(REPO)) for name in names}


def pico_closure(script: Path) -> set[str]:
    """The pico modules a script imports, directly or not, and the data files they read."""
    seen: set[str] = set()
    todo = list(imported_modules(script))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += imported_modules(module_file(module))
    files = {module_file(m) for m in seen}
    return {str(f.relative_to(REPO)) for f in files} | {d for f in files for d in data_files(f)}


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_deps_are_exactly_the_code_it_runs(name):
    declared = {d for d in STAGES[name]["deps"] if d.startswith("pico/")}
    assert declared == pico_closure(REPO / "stages" / f"{name}.py"), name
    assert f"stages/{name}.py" in STAGES[name]["deps"]



def test_every_stage_imports_the_pico_of_its_own_checkout(tmp_path):
    """A queued `dvc exp run` runs the stages in a temporary copy of the repo; they must import that copy's pico
    (the experiment's code), not the one an editable install points at (the workspace's)."""
    import shutil
    import subprocess
    import sys

    for script in sorted((REPO / "stages").glob("*.py")):
        text = script.read_text(encoding="utf-8")
        first_pico = min(text.index(s) for s in ("\nfrom pico", "\nimport pico") if s in text)
        assert "sys.path.insert(0, str(Path(__file__).resolve().parents[1]))" in text[:first_pico], script.name
    copy = tmp_path / "exp-copy"
    shutil.copytree(REPO / "pico", copy / "pico", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "stages", copy / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    init = copy / "pico" / "__init__.py"
    init.write_text(init.read_text(encoding="utf-8") + "\nprint('pico of the copy')\n", encoding="utf-8")
    out = subprocess.run([sys.executable, str(copy / "stages" / "tokenizer.py"), "--help"], capture_output=True,
                         text=True, cwd=tmp_path)
    assert "pico of the copy" in out.stdout, out.stdout + out.stderr
