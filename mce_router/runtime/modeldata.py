"""``ModelDataUrl``: fetch a model archive once, unpack it safely, hand out a read-only path.

SageMaker downloads ``ModelDataUrl`` (a ``.tar.gz``) and unpacks it into ``/opt/ml/model`` of
the container. Here the unpacked tree lives in a cache directory keyed by the URL and the
archive's version (S3 ETag, or file mtime and size), so restarts and further instances reuse it
and a changed archive is fetched again. Supported URLs:

- ``file:///path/model.tar.gz`` (or a tar without compression), ``file:///path/dir`` (a
  directory is mounted as it is, read-only);
- ``s3://bucket/key.tar.gz``, through boto3 (the usual AWS credential chain) and an optional
  endpoint URL (any S3-compatible server).

Unpacking refuses absolute names, ``..``, links pointing outside the tree, devices and FIFOs,
and archives whose members add up to more than the size limit, before anything is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import threading
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import ValidationError

log = logging.getLogger(__name__)


class ModelDataError(ValidationError):
    """A ModelDataUrl that cannot be fetched or unpacked; the message says which and why."""


class ModelDataCache:
    def __init__(
        self, cache_dir: Path, *, max_bytes: int, s3_endpoint_url: str | None = None
    ) -> None:
        self._dir = cache_dir
        self._max_bytes = max_bytes
        self._s3_endpoint_url = s3_endpoint_url or None
        # One fetch per archive at a time: instances starting together share the download.
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def path_for(self, url: str) -> Path:
        """The local directory holding ``url``'s model (blocking: run it in a thread)."""
        parts = urlsplit(url)
        if parts.scheme == "file":
            return self._from_file(url, Path(unquote(parts.path)))
        if parts.scheme == "s3":
            return self._from_s3(url, parts.netloc, parts.path.lstrip("/"))
        raise ModelDataError(
            f"ModelDataUrl '{url}': only file:// and s3:// URLs are supported here.",
            field="ModelDataUrl",
            rule="must be a file:// or s3:// URL",
        )

    def _from_file(self, url: str, path: Path) -> Path:
        if path.is_dir():
            return path
        try:
            stat = path.stat()
        except OSError as exc:
            raise ModelDataError(
                f"ModelDataUrl '{url}': cannot read {path}: {exc.strerror}", field="ModelDataUrl"
            ) from exc
        return self._cached(url, f"{stat.st_mtime_ns}-{stat.st_size}", lambda dest: path)

    def _from_s3(self, url: str, bucket: str, key: str) -> Path:
        if not bucket or not key:
            raise ModelDataError(
                f"ModelDataUrl '{url}': must look like s3://bucket/key", field="ModelDataUrl"
            )
        client = self._s3_client()
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except Exception as exc:  # botocore's errors have no common base worth importing
            raise ModelDataError(
                f"ModelDataUrl '{url}': cannot read the object: {exc}", field="ModelDataUrl"
            ) from exc
        etag = str(head.get("ETag", "")).strip('"')

        def download(dest: Path) -> Path:
            target = dest / "model.tar.gz"
            client.download_file(bucket, key, str(target))
            return target

        return self._cached(url, etag, download)

    def _s3_client(self) -> Any:
        try:
            import boto3
        except ImportError as exc:  # boto3 is in the "s3" extra
            raise ModelDataError(
                "s3:// ModelDataUrl needs boto3: pip install 'mce-router[s3]'",
                field="ModelDataUrl",
            ) from exc
        return boto3.client("s3", endpoint_url=self._s3_endpoint_url)

    def _cached(self, url: str, version: str, fetch: Any) -> Path:
        key = hashlib.sha256(f"{url}\0{version}".encode()).hexdigest()[:32]
        final = self._dir / key
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if final.is_dir():
                return final
            self._dir.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=self._dir))
            try:
                archive = fetch(work)
                tree = work / "tree"
                tree.mkdir()
                unpack(archive, tree, self._max_bytes, url)
                # Readable by the container's own (often non-root) user; never writable.
                _make_read_only(tree)
                tree.rename(final)  # atomic: a cache entry is complete or absent
            except ModelDataError:
                raise
            except (OSError, tarfile.TarError, EOFError) as exc:
                raise ModelDataError(
                    f"ModelDataUrl '{url}': cannot fetch or unpack it: {exc}", field="ModelDataUrl"
                ) from exc
            except Exception as exc:  # boto3 download errors
                raise ModelDataError(
                    f"ModelDataUrl '{url}': cannot fetch it: {exc}", field="ModelDataUrl"
                ) from exc
            finally:
                shutil.rmtree(work, ignore_errors=True)
            log.info("ModelDataUrl %s unpacked into %s", url, final)
            return final


def unpack(archive: Path, dest: Path, max_bytes: int, url: str) -> None:
    """Extract a (possibly compressed) tar into ``dest`` after checking every member."""
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        total = 0
        for member in members:
            _check_member(member, url)
            total += max(member.size, 0)
            if total > max_bytes:
                raise ModelDataError(
                    f"ModelDataUrl '{url}': unpacks to more than {max_bytes} bytes "
                    "(container_engine.model_data_max_bytes)",
                    field="ModelDataUrl",
                )
        # The "data" filter re-checks what _check_member did and drops modes such as setuid.
        tar.extractall(dest, members=members, filter="data")


def _check_member(member: tarfile.TarInfo, url: str) -> None:
    name = PurePosixPath(member.name)
    problem = None
    if name.is_absolute() or ".." in name.parts:
        problem = "a path outside the model directory"
    elif member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        base = name.parent if member.issym() else PurePosixPath()
        if target.is_absolute() or _escapes(base / target):
            problem = f"a link pointing outside the model directory ({member.linkname})"
    elif not (member.isfile() or member.isdir()):
        problem = "a device, FIFO or other special file"
    if problem is not None:
        raise ModelDataError(
            f"ModelDataUrl '{url}': refused to unpack {member.name!r}: {problem}",
            field="ModelDataUrl",
            rule="archive members must stay inside /opt/ml/model",
        )


def _escapes(path: PurePosixPath) -> bool:
    depth = 0
    for part in path.parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in (".", ""):
            depth += 1
    return False


def _make_read_only(tree: Path) -> None:
    for root, dirs, files in os.walk(tree):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, name), 0o555)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                with contextlib.suppress(OSError):
                    os.chmod(path, 0o444)
    os.chmod(tree, 0o555)
