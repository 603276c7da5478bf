"""The package installs the way a new user installs it: in fresh virtual environments made
without system site packages, with pip's build isolation on, from the checkout, from a wheel and
from an sdist; and a failed compile falls back to Python in auto mode, loudly, but fails the
install when compiling was demanded (``MCE_ROUTER_BUILD=native``).

Each build runs mypyc and a C compiler (about 30 s on 2 cores), so the module is its own marker;
it runs in the default suite, and CI's own install is the editable case.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

import mce_router

pytestmark = [pytest.mark.packaging, pytest.mark.slow, pytest.mark.timeout(900)]

CHECKOUT = Path(mce_router.__file__).resolve().parent.parent
if not (CHECKOUT / "pyproject.toml").is_file() or not (CHECKOUT / "setup.py").is_file():
    pytest.skip("the package is not installed from a checkout", allow_module_level=True)

COMPILED_ALL = "compiled (mypyc), response reader in C (llhttp)"
REPORT = "import mce_router.dataplane as d; print(d.implementation()); print(d.build_record())"


def _run(
    argv: list[str], *, cwd: Path, env_extra: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        # The outer run's settings must not leak into the build or the fresh interpreter.
        if key not in ("MCE_ROUTER_BUILD", "MCE_ROUTER_PURE_PYTHON", "PYTHONPATH", "VIRTUAL_ENV")
    }
    env.update(env_extra or {})
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {result.returncode}\n{result.stdout[-4000:]}\n"
            f"{result.stderr[-4000:]}"
        )
    return result


def _copy_checkout(target: Path) -> Path:
    """The tracked files of the checkout (with their edits), as a fresh clone would have them
    plus uncommitted work: no build products, no compiled modules from the editable install."""
    listed = _run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=CHECKOUT
    )
    for name in filter(None, listed.stdout.split("\0")):
        source = CHECKOUT / name
        if source.is_file():
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(source.read_bytes())
    return target


def _fresh_venv(path: Path) -> Path:
    """A virtual environment without system site packages; returns its interpreter."""
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(path)
    return path / "bin" / "python"


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (CHECKOUT / ".git").exists():
        pytest.skip("not a git checkout")
    return _copy_checkout(tmp_path_factory.mktemp("checkout"))


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fresh_venv(tmp_path_factory.mktemp("venv") / "env")


def test_wheel_and_sdist_install_compiled_into_a_fresh_venv(
    source_tree: Path, fresh_python: Path, tmp_path: Path
) -> None:
    # pip wheel . (build isolation on: the build sees only [build-system].requires).
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), "."],
        cwd=source_tree,
        env_extra={"MCE_ROUTER_BUILD": "native"},
    )
    (wheel,) = wheels.glob("mce_router-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert any(
        name.startswith("mce_router/dataplane/proxy.") and name.endswith(".so") for name in names
    )
    assert "mce_router/dataplane/_build_record.json" in names

    # A plain install of that wheel, dependencies from the index, into a venv with nothing in it.
    _run([str(fresh_python), "-m", "pip", "install", "-q", str(wheel)], cwd=tmp_path)
    implementation, record = _run([str(fresh_python), "-c", REPORT], cwd=tmp_path).stdout.split(
        "\n", 1
    )
    assert implementation == COMPILED_ALL
    assert "'mode': 'native', 'compiled': True" in record
    version = _run([str(fresh_python), "-m", "mce_router", "--version"], cwd=tmp_path)
    assert version.stdout.strip() == f"mce-router {mce_router.__version__}"

    # The sdist carries everything the compiled build needs (C sources, vendored llhttp).
    sdists = tmp_path / "sdist"
    _run([sys.executable, "-m", "build", "--sdist", "--outdir", str(sdists)], cwd=source_tree)
    (sdist,) = sdists.glob("mce_router-*.tar.gz")
    with tarfile.open(sdist) as archive:
        members = archive.getnames()
    assert any(name.endswith("dataplane/vendor/llhttp/src/llhttp.c") for name in members)
    _run(
        [
            str(fresh_python),
            "-m",
            "pip",
            "install",
            "-q",
            "--force-reinstall",
            "--no-deps",
            str(sdist),
        ],
        cwd=tmp_path,
        env_extra={"MCE_ROUTER_BUILD": "native"},
    )
    implementation, _ = _run([str(fresh_python), "-c", REPORT], cwd=tmp_path).stdout.split("\n", 1)
    assert implementation == COMPILED_ALL


def _break_the_hot_path(tree: Path) -> None:
    """A type error mypyc refuses, as a missing stub or a new mypy release could bring."""
    stats = tree / "mce_router" / "dataplane" / "stats.py"
    stats.write_text(
        stats.read_text(encoding="utf-8") + '\n\ndef _broken() -> int:\n    return "x"\n',
        encoding="utf-8",
    )


def test_a_failed_compile_falls_back_loudly_in_auto_mode(source_tree: Path, tmp_path: Path) -> None:
    broken = _copy_checkout(tmp_path / "broken")
    _break_the_hot_path(broken)
    wheels = tmp_path / "wheels"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(wheels), "."],
        cwd=broken,
    )
    output = built.stdout + built.stderr
    assert "WARNING: the hot path is NOT compiled: mypyc could not compile it" in output
    assert "stats.py:" in output and "Incompatible return value type" in output
    (wheel,) = wheels.glob("mce_router-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert not [name for name in archive.namelist() if name.endswith(".so")]
        record = archive.read("mce_router/dataplane/_build_record.json").decode()
    assert '"mode": "auto"' in record and "mypyc could not compile it" in record

    # Installed, the package says why it runs Python (mce-router serve logs this line).
    target = tmp_path / "installed"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    shown = _run(
        [sys.executable, "-c", REPORT], cwd=tmp_path, env_extra={"PYTHONPATH": str(target)}
    ).stdout.splitlines()[0]
    assert shown.startswith("Python (compiling failed at install: mypyc could not compile it (")


def test_a_failed_compile_fails_the_install_in_native_mode(tmp_path: Path) -> None:
    broken = _copy_checkout(tmp_path / "broken")
    _break_the_hot_path(broken)
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path / "w"), "."],
        cwd=broken,
        env_extra={"MCE_ROUTER_BUILD": "native"},
        check=False,
    )
    assert built.returncode != 0
    assert "MCE_ROUTER_BUILD=native, but mypyc could not compile it" in built.stdout + built.stderr
