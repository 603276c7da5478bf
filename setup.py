"""Build script: everything is declared in pyproject.toml except the compiled hot path.

When a C compiler is present, the data plane (``mce_router/dataplane/{headers,proxy,response,
stats}.py``) is compiled to C with mypyc, the same typed source, and the container-response
reader is also built in C on the vendored llhttp (``_llresponse.c``; ``response.py`` has the
Python reader it must match): together about twice the requests per CPU second (README
"Performance"). Without a compiler the package installs as plain Python and works the same, only
slower. ``MCE_ROUTER_BUILD`` chooses:

- ``auto`` (default): compile when a C compiler works, otherwise warn and stay pure Python;
- ``native``: compile or fail the install;
- ``pure``: never compile.

Next to the compiled modules the build writes ``_compiled_sources.json``, the SHA-256 of every
source it compiled; ``mce_router.dataplane`` uses the Python source instead of a compiled module
(or the Python reader instead of the C one) built from different source (an edited checkout that
was not reinstalled).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
PACKAGE_DIR = "mce_router/dataplane"
HOT_PATH = [f"{PACKAGE_DIR}/{name}.py" for name in ("headers", "proxy", "response", "stats")]
NATIVE_READER = f"{PACKAGE_DIR}/_llresponse.c"
LLHTTP = f"{PACKAGE_DIR}/vendor/llhttp"
MANIFEST = "_compiled_sources.json"
# The isolated build environment has none of the runtime dependencies: their types count as Any
# for compilation (mypy --strict on the installed package is the type check that matters).
MYPY_FLAGS = ["--ignore-missing-imports", "--follow-imports=silent", "--no-warn-unused-ignores"]


def _warn(message: str) -> None:
    print(f"mce-router build: {message}", file=sys.stderr)


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


class BuildExtRecordingSources(build_ext):  # type: ignore[misc]
    """build_ext that also records which sources the compiled modules were built from."""

    def run(self) -> None:
        super().run()
        if not self.extensions:
            return
        text = json.dumps(_source_hashes(), indent=2, sort_keys=True) + "\n"
        targets = [Path(self.build_lib, PACKAGE_DIR)]
        if self.inplace or getattr(self, "editable_mode", False):
            targets.append(HERE / PACKAGE_DIR)
        for target in targets:
            target.mkdir(parents=True, exist_ok=True)
            (target / MANIFEST).write_text(text, encoding="utf-8")


#: setup.py commands that produce modules; metadata-only runs (egg_info, the PEP 517 "get
#: requires" hooks) skip the ~30 s of compiling.
BUILDING_COMMANDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install"}


def _extensions() -> list[Any]:
    mode = os.environ.get("MCE_ROUTER_BUILD", "auto").strip().lower()
    if mode not in ("auto", "native", "pure"):
        raise SystemExit(f"MCE_ROUTER_BUILD must be auto, native or pure, not {mode!r}")
    if mode == "pure" or not BUILDING_COMMANDS.intersection(sys.argv[1:]):
        return []
    if not _compiler_works():
        if mode == "native":
            raise SystemExit("MCE_ROUTER_BUILD=native but no working C compiler was found")
        _warn("no working C compiler: the hot path stays pure Python (slower, same behaviour)")
        return []
    from mypyc.build import mypycify

    compiled = mypycify([*MYPY_FLAGS, *HOT_PATH], opt_level="3", group_name="mce_router_hotpath")
    return [*compiled, _native_reader()]


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExtRecordingSources})
