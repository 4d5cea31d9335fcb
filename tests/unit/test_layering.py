"""The layering rule of the README, as `make lint` checks it with import-linter.

Every top-level module of hookline must be named in pyproject's contracts (a new module
that is not would escape them), and a deliberate violation must fail ``lint-imports``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import hookline

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(hookline.__file__).parent
COMPONENTS = {"hookline.receiver", "hookline.dispatcher", "hookline.operator"}
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def contracts() -> dict[str, dict[str, Any]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["name"]: c for c in config["contracts"]}


def top_level_modules() -> set[str]:
    names = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    names |= {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    return {f"hookline.{n}" for n in names}


def test_every_module_is_either_core_or_above_it_and_only_the_store_may_import_redis() -> None:
    c = contracts()
    core = c["the core never imports a component, the local stack, the tools or the CLI"]
    above = set(core["forbidden_modules"])
    assert COMPONENTS <= above
    assert set(core["source_modules"]) | above == top_level_modules()
    assert not set(core["source_modules"]) & above
    independent = c["components never import each other"]
    assert set(independent["modules"]) == COMPONENTS
    redis = c["only hookline.store talks to Redis"]
    assert set(redis["source_modules"]) | {"hookline.store"} == top_level_modules()
    assert set(redis["forbidden_modules"]) == {"redis", "hiredis"}


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: run `make deps` (import-linter is a dev extra)")
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree / "src"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("models.py", "import redis", "only hookline.store talks to Redis"),
        ("receiver/app.py", "import hookline.dispatcher.worker", "components never import"),
        ("metrics.py", "import hookline.operator.status", "the core never imports"),
    ],
)
def test_a_deliberate_violation_fails_lint_imports(
    tmp_path: Path, module: str, line: str, broken: str
) -> None:
    shutil.copytree(PACKAGE, tmp_path / "src" / "hookline")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    assert lint(tmp_path).returncode == 0, "the tree as it is keeps every contract"
    with (tmp_path / "src" / "hookline" / module).open("a") as f:
        f.write(f"\n{line}  # noqa\n")
    done = lint(tmp_path)
    assert done.returncode != 0, done.stdout
    assert f"{broken}" in done.stdout.split("Broken contracts")[-1], done.stdout
