"""The compiled hot path (setup.py, mce_router/dataplane/__init__.py): used only when it was
built from the source in the checkout, and never when MCE_ROUTER_PURE_PYTHON asks for Python."""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mce_router
from mce_router import dataplane

PACKAGE = Path(mce_router.__file__).resolve().parent
DATAPLANE = PACKAGE / "dataplane"
COMPILED = any(
    (DATAPLANE / f"proxy{suffix}").exists() for suffix in importlib.machinery.EXTENSION_SUFFIXES
)

#: Prints the implementation, then the file every module of the compiled group came from.
REPORT = (
    "import sys, mce_router.dataplane as d, mce_router.dataplane.proxy; "
    "print(d.implementation()); "
    "print(*(sys.modules['mce_router.dataplane.' + n].__file__ "
    "for n in ('headers', 'stats', 'response', 'proxy')))"
)
COMPILED_ALL = "compiled (mypyc), response reader in C (llhttp)"


def _report(env_extra: dict[str, str], pythonpath: Path | None = None) -> tuple[str, list[str]]:
    env = {key: value for key, value in os.environ.items() if key != "MCE_ROUTER_PURE_PYTHON"}
    env.update(env_extra)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    result = subprocess.run(
        [sys.executable, "-c", REPORT],
        env=env,
        cwd=pythonpath or Path.cwd(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    implementation, files = result.stdout.splitlines()
    return implementation, files.split()


@pytest.mark.skipif(not COMPILED, reason="installed without a C compiler: pure Python only")
def test_an_installed_build_runs_the_compiled_hot_path() -> None:
    if not os.environ.get("MCE_ROUTER_PURE_PYTHON"):
        # The suite itself then exercises the compiled modules (CI has a compiler); the second
        # pass of the CI command sets MCE_ROUTER_PURE_PYTHON to exercise the source.
        assert dataplane.implementation() == COMPILED_ALL
    implementation, module_files = _report({})
    assert implementation == COMPILED_ALL
    assert not any(name.endswith(".py") for name in module_files)


def test_pure_python_on_request() -> None:
    implementation, module_files = _report({"MCE_ROUTER_PURE_PYTHON": "1"})
    assert implementation == (
        "Python (MCE_ROUTER_PURE_PYTHON is set), response reader in Python (httptools)"
    )
    # Every module of the group, including those the others import (loaded in that order).
    assert module_files == [
        str(DATAPLANE / f"{name}.py") for name in ("headers", "stats", "response", "proxy")
    ]


@pytest.mark.skipif(not COMPILED, reason="installed without a C compiler: nothing can be stale")
def test_a_source_edited_after_compiling_is_run_as_source(tmp_path: Path) -> None:
    copy = tmp_path / "mce_router"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for sibling in PACKAGE.parent.glob("mce_router_hotpath__mypyc*"):
        shutil.copy2(sibling, tmp_path / sibling.name)
    untouched, _ = _report({}, pythonpath=tmp_path)
    assert untouched == COMPILED_ALL

    # The C reader is checked on its own source: editing it leaves the compiled modules on.
    reader = copy / "dataplane" / "_llresponse.c"
    reader.write_text(reader.read_text(encoding="utf-8") + "\n/* edited */\n", encoding="utf-8")
    implementation, module_files = _report({}, pythonpath=tmp_path)
    assert implementation == "compiled (mypyc), response reader in Python (httptools)"
    assert not any(name.endswith(".py") for name in module_files)

    headers = copy / "dataplane" / "headers.py"
    headers.write_text(headers.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
    implementation, module_files = _report({}, pythonpath=tmp_path)
    assert implementation == (
        "Python (headers.py changed since it was compiled (reinstall to recompile)), "
        "response reader in Python (httptools)"
    )
    # All modules of the compiled group switch together, not just the edited one.
    assert module_files == [
        str(copy / "dataplane" / f"{name}.py") for name in ("headers", "stats", "response", "proxy")
    ]


def test_a_build_that_demanded_compiling_installed_the_compiled_hot_path() -> None:
    """CI installs with MCE_ROUTER_BUILD=native: the installed hot path must be the compiled
    one (a build that quietly fell back would otherwise pass every other test)."""
    if os.environ.get("MCE_ROUTER_BUILD") != "native":
        pytest.skip("this run's install did not demand compiling (MCE_ROUTER_BUILD=native)")
    record = dataplane.build_record()
    assert record is not None, "the install wrote no _build_record.json"
    assert record["mode"] == "native" and record["compiled"] is True
    if not os.environ.get("MCE_ROUTER_PURE_PYTHON"):
        assert dataplane.implementation() == COMPILED_ALL
