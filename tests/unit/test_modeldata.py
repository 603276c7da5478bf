"""ModelDataUrl unpacking refuses what could escape /opt/ml/model, and caches by version."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from mce_router.runtime.modeldata import ModelDataCache, ModelDataError


def _tar(path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    ("member", "why"),
    [
        ((_file("../evil"), b"x"), "outside"),
        ((_file("/etc/evil"), b"x"), "outside"),
        ((_link("up", "../../etc/passwd"), b""), "link"),
        ((_link("abs", "/etc/passwd"), b""), "link"),
        ((_link("hard", "../x", tarfile.LNKTYPE), b""), "link"),
    ],
)
def test_unsafe_members_are_refused(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes], why: str
) -> None:
    archive = _tar(tmp_path / "m.tar.gz", (_file("ok.txt"), b"fine"), member)
    cache = ModelDataCache(tmp_path / "cache", max_bytes=1 << 20)
    with pytest.raises(ModelDataError, match=why):
        cache.path_for(f"file://{archive}")
    assert not (tmp_path / "evil").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # nothing half-unpacked


def test_size_limit(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "m.tar.gz", (_file("big.bin"), b"x" * 2048))
    with pytest.raises(ModelDataError, match="more than 1024 bytes"):
        ModelDataCache(tmp_path / "cache", max_bytes=1024).path_for(f"file://{archive}")


def test_links_inside_the_tree_are_kept_and_the_cache_follows_the_archive(tmp_path: Path) -> None:
    archive = _tar(
        tmp_path / "m.tar.gz", (_file("a/model.bin"), b"v1"), (_link("a/alias", "model.bin"), b"")
    )
    cache = ModelDataCache(tmp_path / "cache", max_bytes=1 << 20)
    first = cache.path_for(f"file://{archive}")
    assert (first / "a" / "alias").read_bytes() == b"v1"
    assert cache.path_for(f"file://{archive}") == first  # fetched once
    _tar(archive, (_file("a/model.bin"), b"v2"))
    os.utime(archive, ns=(1, 1))  # a new mtime: a new version
    second = cache.path_for(f"file://{archive}")
    assert second != first and (second / "a" / "model.bin").read_bytes() == b"v2"


def test_a_directory_is_used_as_it_is_and_other_schemes_are_refused(tmp_path: Path) -> None:
    cache = ModelDataCache(tmp_path / "cache", max_bytes=1 << 20)
    assert cache.path_for(f"file://{tmp_path}") == tmp_path
    with pytest.raises(ModelDataError, match="only file:// and s3://"):
        cache.path_for("https://example.com/model.tar.gz")
    with pytest.raises(ModelDataError, match="cannot read"):
        cache.path_for(f"file://{tmp_path}/missing.tar.gz")
