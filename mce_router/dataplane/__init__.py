"""The data plane: runtime API listener and upstream pools (``proxy``), header rules
(``headers``).

Both modules are usually compiled with mypyc at install time (see ``setup.py``). The compiled
modules are used only when they were built from the source that is here now: after an edit
without a reinstall, or with ``MCE_ROUTER_PURE_PYTHON=1`` in the environment, the Python source
is loaded instead, so what runs is always what the checkout says. :func:`implementation` tells
which one this process uses.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
#: Compiled together (one mypyc group sharing native classes): all of them or none.
_COMPILED = ("headers", "proxy", "stats")
_MANIFEST = _HERE / "_compiled_sources.json"


def _why_source() -> str | None:
    """Why the compiled modules must not be used, or None when they may (or do not exist)."""
    if os.environ.get("MCE_ROUTER_PURE_PYTHON", "").strip() not in ("", "0"):
        return "MCE_ROUTER_PURE_PYTHON is set"
    if not any(
        (_HERE / f"{name}{suffix}").exists()
        for name in _COMPILED
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
    ):
        return None
    try:
        recorded = json.loads(_MANIFEST.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{_MANIFEST.name} is missing or unreadable"
    for name in _COMPILED:
        source = (_HERE / f"{name}.py").read_bytes()
        if recorded.get(name) != hashlib.sha256(source).hexdigest():
            return f"{name}.py changed since it was compiled (reinstall to recompile)"
    return None


def _load_sources() -> None:
    """Import the Python source of every compiled module, bypassing the extension modules."""
    for name in _COMPILED:
        qualified = f"{__name__}.{name}"
        spec = importlib.util.spec_from_file_location(qualified, _HERE / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[qualified]
            raise


_SOURCE_REASON = _why_source()
if _SOURCE_REASON is not None:
    _load_sources()


def implementation() -> str:
    """``"compiled (mypyc)"`` or ``"Python (<why>)"``: what this process runs for the hot path."""
    from . import proxy

    if Path(proxy.__file__ or "").suffix == ".py":
        return f"Python ({_SOURCE_REASON or 'not compiled at install'})"
    return "compiled (mypyc)"
