"""Build script: everything is declared in pyproject.toml except the compiled hot path.

When a C compiler is present, the data plane (``mce_router/dataplane/{headers,proxy,response,
stats}.py``) is compiled to C with mypyc, the same typed source, and the container-response
reader is also built in C on the vendored llhttp (``_llresponse.c``; ``response.py`` has the
Python reader it must match): together about twice the requests per CPU second (README
"Performance"). Without a compiler the package installs as plain Python and works the same, only
slower. ``MCE_ROUTER_BUILD`` chooses:

- ``auto`` (default): compile when a C compiler works; when there is none, or when compiling
  fails for any reason (mypyc's type check, the C compiler), warn loudly and install the
  pure-Python hot path;
- ``native``: compile or fail the install (CI and the benchmarks use it);
- ``pure``: never compile.

Next to the compiled modules the build writes ``_compiled_sources.json``, the SHA-256 of every
source it compiled; ``mce_router.dataplane`` uses the Python source instead of a compiled module
(or the Python reader instead of the C one) built from different source (an edited checkout that
was not reinstalled). Every build also writes ``_build_record.json``: the mode it ran in and,
when it fell back to Python, why; ``mce-router serve`` repeats that reason in its start-up line.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PACKAGE_DIR = "mce_router/dataplane"
HOT_PATH = [f"{PACKAGE_DIR}/{name}.py" for name in ("headers", "proxy", "response", "stats")]
NATIVE_READER = f"{PACKAGE_DIR}/_llresponse.c"
LLHTTP = f"{PACKAGE_DIR}/vendor/llhttp"
MANIFEST = "_compiled_sources.json"
BUILD_RECORD = "_build_record.json"
MODES = ("auto", "native", "pure")
# The isolated build environment has only [build-system].requires (httptools among them, for
# its types); every other runtime dependency counts as Any there. mypy --strict on the installed
# package is the type check that matters, so the build relaxes the checks that only an Any from
# a missing dependency trips.
MYPY_FLAGS = [
    "--ignore-missing-imports",
    "--follow-imports=silent",
    "--no-warn-unused-ignores",
    "--no-warn-return-any",
    "--allow-subclassing-any",
    "--allow-untyped-calls",
    "--allow-untyped-decorators",
]
BANNER = "*" * 78


def _mode() -> str:
    mode = os.environ.get("MCE_ROUTER_BUILD", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise SystemExit(f"MCE_ROUTER_BUILD must be auto, native or pure, not {mode!r}")
    return mode


MODE = _mode()
#: Why this build installs the Python hot path although it was asked to compile (auto mode).
fallback_reason: str | None = None


def _fall_back(reason: str) -> None:
    """Auto mode: install the pure-Python hot path, and say so where nobody can miss it."""
    global fallback_reason
    if MODE == "native":
        raise SystemExit(f"mce-router build: MCE_ROUTER_BUILD=native, but {reason}")
    fallback_reason = reason
    print(
        f"\n{BANNER}\nmce-router build: WARNING: the hot path is NOT compiled: {reason}.\n"
        "mce-router installs and works on the pure-Python hot path (about half the requests\n"
        "per CPU second); `mce-router serve` says so at start-up. MCE_ROUTER_BUILD=native\n"
        f"makes this an error instead.\n{BANNER}\n",
        file=sys.stderr,
        flush=True,
    )


def _compiler_works() -> bool:
    """Compile one trivial C file with the compiler setuptools would use."""
    from setuptools._distutils.ccompiler import new_compiler  # type: ignore[import-untyped]
    from setuptools._distutils.sysconfig import customize_compiler  # type: ignore[import-untyped]

    compiler = new_compiler()
    customize_compiler(compiler)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "probe.c")
        source.write_text("int mce_router_probe(void) { return 0; }\n", encoding="ascii")
        try:
            compiler.compile([str(source)], output_dir=tmp)
        except Exception:  # any failure means "no usable compiler"
            return False
    return True


def _source_hashes() -> dict[str, str]:
    def digest(path: str) -> str:
        return hashlib.sha256((HERE / path).read_bytes()).hexdigest()

    hashes = {Path(path).stem: digest(path) for path in HOT_PATH}
    hashes[Path(NATIVE_READER).name] = digest(NATIVE_READER)
    return hashes


def _native_reader() -> Any:
    return Extension(
        "mce_router.dataplane._llresponse",
        sources=[NATIVE_READER, *(f"{LLHTTP}/src/{name}.c" for name in ("api", "http", "llhttp"))],
        include_dirs=[f"{LLHTTP}/include"],
        extra_compile_args=["-O3"],
    )


def _write_beside_package(command: Any, name: str, text: str | None) -> None:
    """Write (or with None, remove) a file of the dataplane package in the build directory and,
    for in-place and editable builds, in the source tree, where those load the package from."""
    targets = [Path(command.build_lib, PACKAGE_DIR)]
    if getattr(command, "inplace", False) or getattr(command, "editable_mode", False):
        targets.append(HERE / PACKAGE_DIR)
    for target in targets:
        path = target / name
        if text is None:
            path.unlink(missing_ok=True)
        else:
            target.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")


def _write_build_record(command: Any, compiled: bool) -> None:
    record = {"mode": MODE, "compiled": compiled, "fallback_reason": fallback_reason}
    _write_beside_package(command, BUILD_RECORD, json.dumps(record, indent=2) + "\n")


class BuildPyRecordingMode(build_py):  # type: ignore[misc]
    """build_py that records the build mode even when there is nothing to compile (build_ext
    does not run then); build_ext overwrites the record once it knows how compiling went."""

    def run(self) -> None:
        super().run()
        _write_build_record(self, compiled=False)


class BuildExtRecordingSources(build_ext):  # type: ignore[misc]
    """build_ext that records which sources the compiled modules were built from, and that in
    auto mode turns a failed C compile into the pure-Python install."""

    def run(self) -> None:
        if not self.extensions:
            _write_build_record(self, compiled=False)
            return
        try:
            super().run()
        except Exception as exc:  # CompileError, LinkError, any failure of the toolchain
            _fall_back(f"compiling the generated C code failed ({type(exc).__name__}: {exc})")
            self._remove_partial_outputs()
            _write_build_record(self, compiled=False)
            return
        text = json.dumps(_source_hashes(), indent=2, sort_keys=True) + "\n"
        _write_beside_package(self, MANIFEST, text)
        _write_build_record(self, compiled=True)

    def _remove_partial_outputs(self) -> None:
        """No compiled module may stay behind from a failed build: the group is all or none."""
        for ext in self.extensions:
            filename = self.get_ext_filename(ext.name)
            for root in (Path(self.build_lib), HERE):
                Path(root, filename).unlink(missing_ok=True)
        _write_beside_package(self, MANIFEST, None)


#: setup.py commands that produce modules; metadata-only runs (egg_info, the PEP 517 "get
#: requires" hooks) skip the ~30 s of compiling.
BUILDING_COMMANDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install"}


def _mypycify() -> list[Any]:
    """The mypyc extensions, or [] after falling back (auto mode) when mypyc fails."""
    from mypyc.build import mypycify

    # mypyc prints its type errors and then calls sys.exit: keep the errors for the warning.
    errors = io.StringIO()
    try:
        with contextlib.redirect_stdout(errors):
            return list(
                mypycify([*MYPY_FLAGS, *HOT_PATH], opt_level="3", group_name="mce_router_hotpath")
            )
    except (Exception, SystemExit) as exc:
        output = errors.getvalue().strip()
        print(output, file=sys.stderr)
        first = output.splitlines()[0] if output else f"{type(exc).__name__}: {exc}"
        _fall_back(f"mypyc could not compile it ({first})")
        return []


def _extensions() -> list[Any]:
    if MODE == "pure" or not BUILDING_COMMANDS.intersection(sys.argv[1:]):
        return []
    if not _compiler_works():
        _fall_back("no working C compiler was found")
        return []
    compiled = _mypycify()
    return [*compiled, _native_reader()] if compiled else []


setup(
    ext_modules=_extensions(),
    cmdclass={"build_py": BuildPyRecordingMode, "build_ext": BuildExtRecordingSources},
)
