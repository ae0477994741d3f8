"""How the core reads the files of a source: a small protocol, local files by default.

The core never imports the storage layer (S3, pyarrow filesystems). Code that reads sources
from object storage passes an implementation of :class:`Files` that can (the I/O package's
:data:`sas_ray.io.storage.FILES`); :data:`LOCAL_FILES` reads local paths only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO, Protocol

from sas_ray.errors import SasRayError


class Files(Protocol):
    """Read access to local paths or URIs."""

    def exists(self, uri: str) -> bool: ...

    def read_bytes(self, uri: str) -> bytes: ...

    def list_files(self, uri: str) -> list[str]:
        """Every file below ``uri`` (recursive), as full paths/URIs, sorted."""
        ...

    def open_input_stream(self, uri: str) -> BinaryIO: ...


def walk(root: str) -> Iterator[tuple[str, str]]:
    """``(relative path with "/", full path)`` of every file below the local dir ``root``."""
    todo = [""]
    while todo:
        rel = todo.pop()
        with os.scandir(os.path.join(root, rel)) as entries:
            for entry in entries:
                path = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir():
                    todo.append(path)
                elif entry.is_file():
                    yield path, entry.path


class LocalFiles:
    """:class:`Files` for local paths; a URI (``scheme://``) is one clear error."""

    @staticmethod
    def _local(uri: str) -> str:
        if "://" in uri:
            raise SasRayError(f"{uri} is not a local path; read it through sas-ray's storage "
                              "layer (sas-ray ingest), which reaches s3://")
        return uri

    def exists(self, uri: str) -> bool:
        return os.path.exists(self._local(uri))

    def read_bytes(self, uri: str) -> bytes:
        with open(self._local(uri), "rb") as f:
            return f.read()

    def list_files(self, uri: str) -> list[str]:
        return sorted(path for _, path in walk(self._local(uri)))

    def open_input_stream(self, uri: str) -> BinaryIO:
        return open(self._local(uri), "rb")


LOCAL_FILES = LocalFiles()
