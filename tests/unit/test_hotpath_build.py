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

REPORT = (
    "import mce_router.dataplane as d, mce_router.dataplane.proxy as p; "
    "print(d.implementation()); print(p.__file__)"
)


def _report(env_extra: dict[str, str], pythonpath: Path | None = None) -> list[str]:
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
    return result.stdout.splitlines()


@pytest.mark.skipif(not COMPILED, reason="installed without a C compiler: pure Python only")
def test_an_installed_build_runs_the_compiled_hot_path() -> None:
    if not os.environ.get("MCE_ROUTER_PURE_PYTHON"):
        # The suite itself then exercises the compiled modules (CI has a compiler); the second
        # pass of the CI command sets MCE_ROUTER_PURE_PYTHON to exercise the source.
        assert dataplane.implementation() == "compiled (mypyc)"
    implementation, module_file = _report({})
    assert implementation == "compiled (mypyc)"
    assert not module_file.endswith(".py")


def test_pure_python_on_request() -> None:
    implementation, module_file = _report({"MCE_ROUTER_PURE_PYTHON": "1"})
    assert implementation == "Python (MCE_ROUTER_PURE_PYTHON is set)"
    assert module_file.endswith(str(Path("dataplane", "proxy.py")))


@pytest.mark.skipif(not COMPILED, reason="installed without a C compiler: nothing can be stale")
def test_a_source_edited_after_compiling_is_run_as_source(tmp_path: Path) -> None:
    copy = tmp_path / "mce_router"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for sibling in PACKAGE.parent.glob("mce_router_hotpath__mypyc*"):
        shutil.copy2(sibling, tmp_path / sibling.name)
    untouched, _ = _report({}, pythonpath=tmp_path)
    assert untouched == "compiled (mypyc)"

    headers = copy / "dataplane" / "headers.py"
    headers.write_text(headers.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
    implementation, module_file = _report({}, pythonpath=tmp_path)
    assert implementation == (
        "Python (headers.py changed since it was compiled (reinstall to recompile))"
    )
    # All modules of the compiled group switch together, not just the edited one.
    assert module_file == str(copy / "dataplane" / "proxy.py")
