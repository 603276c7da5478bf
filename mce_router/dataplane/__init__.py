"""The data plane: runtime API listener and upstream pools (``proxy``), header rules
(``headers``), call counters (``stats``), container-response reading (``response``).

These modules are usually compiled with mypyc at install time (see ``setup.py``), and the
response reader also exists in C (``_llresponse.c``, on llhttp). Compiled code is used only when
it was built from the source that is here now: after an edit without a reinstall, or with
``MCE_ROUTER_PURE_PYTHON=1`` in the environment, the Python source is loaded instead, so what
runs is always what the checkout says. :func:`implementation` tells which one this process uses.
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
#: Compiled together (one mypyc group sharing native classes): all of them or none. In import
#: order, modules before those that import them: a source module importing one not loaded yet
#: would get the compiled one.
_COMPILED = ("headers", "stats", "response", "proxy")
#: The C response reader's source, recorded in the manifest like the modules above.
_NATIVE_READER_SOURCE = "_llresponse.c"
_MANIFEST = _HERE / "_compiled_sources.json"
#: Written by every build (setup.py): the mode it ran in and why it fell back to Python, if so.
_BUILD_RECORD = _HERE / "_build_record.json"


def _python_requested() -> bool:
    return os.environ.get("MCE_ROUTER_PURE_PYTHON", "").strip() not in ("", "0")


def _recorded_hashes() -> dict[str, str] | None:
    """The manifest the build wrote (source name -> SHA-256), None when missing or unreadable."""
    try:
        recorded = json.loads(_MANIFEST.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def _built_from_here(recorded: dict[str, str], key: str, source_name: str) -> bool:
    source = (_HERE / source_name).read_bytes()
    return recorded.get(key) == hashlib.sha256(source).hexdigest()


def _why_source() -> str | None:
    """Why the compiled modules must not be used, or None when they may (or do not exist)."""
    if _python_requested():
        return "MCE_ROUTER_PURE_PYTHON is set"
    if not any(
        (_HERE / f"{name}{suffix}").exists()
        for name in _COMPILED
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
    ):
        return None
    recorded = _recorded_hashes()
    if recorded is None:
        return f"{_MANIFEST.name} is missing or unreadable"
    for name in _COMPILED:
        if not _built_from_here(recorded, name, f"{name}.py"):
            return f"{name}.py changed since it was compiled (reinstall to recompile)"
    return None


def build_record() -> dict[str, object] | None:
    """What the install recorded: ``{"mode": "auto" | "native" | "pure", "compiled": bool,
    "fallback_reason": str | None}``; None for a checkout that was never built."""
    try:
        record = json.loads(_BUILD_RECORD.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _why_not_compiled() -> str:
    record = build_record()
    if record is None:
        return "not compiled at install"
    if record.get("fallback_reason"):
        return f"compiling failed at install: {record['fallback_reason']}"
    if record.get("mode") == "pure":
        return "installed with MCE_ROUTER_BUILD=pure"
    return "not compiled at install"


def native_reader_allowed() -> bool:
    """The C response reader may be used: Python was not asked for, and the reader was built
    from the source that is here now."""
    if _python_requested():
        return False
    recorded = _recorded_hashes()
    return recorded is not None and _built_from_here(
        recorded, _NATIVE_READER_SOURCE, _NATIVE_READER_SOURCE
    )


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
    """What this process runs for the hot path: ``"compiled (mypyc)"`` or ``"Python (<why>)"``,
    then the response reader, e.g. ``"compiled (mypyc), response reader in C (llhttp)"``."""
    from . import proxy, response

    reader = f"response reader in {response.reader_implementation()}"
    if Path(proxy.__file__ or "").suffix == ".py":
        return f"Python ({_SOURCE_REASON or _why_not_compiled()}), {reader}"
    return f"compiled (mypyc), {reader}"
