"""ImageFolder sources: a directory or a (compressed) tar of ``[split/]class/image`` files."""

from __future__ import annotations

import bz2
import lzma
import os
import zlib
from collections.abc import Iterator
from typing import Any

from sas_ray.core.data.files import LOCAL_FILES, Files, walk
from sas_ray.core.data.sources import (
    IMAGE_EXTENSIONS,
    SOURCE_FORMS,
    SPLIT_NAMES,
    TAR_EXTENSIONS,
    Item,
    Source,
)
from sas_ray.errors import SasRayError


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def folder_layout(paths: list[str]) -> list[tuple[str, str, str | None]]:
    """Split and class of each relative image path: ``[(path, split, class or None)]``.

    A wrapper directory shared by every path (and not a split name) is skipped while paths
    are at least 3 levels deep, so ``cifar10/train/cat/1.jpg`` reads as ``train/cat/1.jpg``.
    """
    parts = [p.split("/") for p in paths]
    while (parts and all(len(p) >= 3 for p in parts) and len({p[0] for p in parts}) == 1
           and parts[0][0] not in SPLIT_NAMES):
        parts = [p[1:] for p in parts]
    split_layout = any(len(p) >= 2 and p[0] in SPLIT_NAMES for p in parts)
    out = []
    for path, p in zip(paths, parts, strict=True):
        if split_layout:
            if len(p) < 2 or p[0] not in SPLIT_NAMES:
                raise SasRayError(f"'{path}' is outside the split folders (train/, test/, ...) "
                                  "that the rest of the source uses; move it into a split "
                                  "folder or remove it")
            split, rest = p[0], p[1:]
        else:
            split, rest = "train", p
        out.append((path, split, rest[0] if len(rest) >= 2 else None))
    return out


def _imagefolder(spec: str, kind: str, files: dict[str, Any]) -> Source:
    """Build a source from ``{relative path: payload}`` of every file in the folder/archive."""
    images, ignored = [], []
    for path in files:  # images whose path has no hidden part; everything else is ignored
        hidden = path.startswith(".") or "/." in path
        (images if is_image_name(path) and not hidden else ignored).append(path)
    images.sort()
    ignored.sort()
    if not images:
        raise SasRayError(f"no images found in {spec} ({len(ignored)} other files ignored); "
                          "expected train/<class>/*.jpg, <class>/*.png or a flat folder of "
                          f"images with extensions {', '.join(IMAGE_EXTENSIONS[:3])}...")
    layout = folder_layout(images)
    class_names = sorted({c for _, _, c in layout if c is not None})
    index = {c: i for i, c in enumerate(class_names)}
    items = [Item(path, split, None if c is None else index[c], files[path])
             for path, split, c in layout]
    return Source(spec, kind, class_names, items, ignored=ignored)


def imagefolder_dir(uri: str, files: Files = LOCAL_FILES) -> Source:
    """An ImageFolder directory, local or ``s3://``; images are read later, by path."""
    if "://" in uri:
        prefix = uri.rstrip("/") + "/"
        paths = [p for p in files.list_files(uri) if p.startswith(prefix)]
        if not paths and not files.exists(uri):
            raise SasRayError(f"source {uri} does not exist; pass an existing S3 prefix or one "
                              f"of: {SOURCE_FORMS}")
        return _imagefolder(uri, "file", {p[len(prefix):]: p for p in paths})
    root = os.path.abspath(uri)
    if not os.path.exists(root):
        raise SasRayError(f"source {uri} does not exist; pass an existing path or one of: "
                          f"{SOURCE_FORMS}")
    if not os.path.isdir(root):
        raise SasRayError(f"source {uri} is a file but not a {'/'.join(TAR_EXTENSIONS)} "
                          "archive; pass an ImageFolder directory or archive")
    return _imagefolder(uri, "file", dict(walk(root)))


def decompressed_chunks(stream: Any, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Chunks of a file-like object, decompressed when it starts with a gzip, bzip2 or xz
    magic number (concatenated gzip members are followed)."""
    head = stream.read(chunk_size)
    if head[:2] == b"\x1f\x8b":
        def new() -> Any:
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif head[:3] == b"BZh":
        new = bz2.BZ2Decompressor
    elif head[:6] == b"\xfd7zXZ\x00":
        new = lzma.LZMADecompressor
    else:
        while head:
            yield head
            head = stream.read(chunk_size)
        return
    decomp, data = new(), head
    while data:
        yield decomp.decompress(data)
        data = decomp.unused_data or stream.read(chunk_size)
        if decomp.eof and data:
            decomp = new()
    if not decomp.eof:
        raise EOFError("compressed stream ended before the end-of-stream marker")


class _Buffer:
    """Bytes from an iterator of chunks, consumed in exact sizes."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks, self.buf, self.pos = chunks, bytearray(), 0

    def take(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n:
            chunk = next(self.chunks, None)
            if chunk is None:
                raise EOFError(f"archive ends in the middle of a member ({n} bytes wanted)")
            del self.buf[:self.pos]
            self.buf += chunk
            self.pos = 0
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for large values
        return int.from_bytes(field[1:], "big")
    return int(field.strip(b" \0") or b"0", 8)


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a pax extended header (records: ``"%d key=value\\n"``)."""
    pos, path = 0, None
    while pos < len(data):
        length = int(data[pos:data.index(b" ", pos)])
        key, _, value = data[data.index(b" ", pos) + 1:pos + length - 1].partition(b"=")
        if key == b"path":
            path = value.decode("utf-8", "surrogateescape")
        pos += length
    return path


def iter_tar(chunks: Iterator[bytes]) -> Iterator[tuple[str, bytes]]:
    """``(path, bytes)`` of every regular file in an uncompressed tar stream.

    Reads 512-byte headers (ustar, GNU and pax: long names via ``L`` members and pax
    ``path`` records), checks each header's checksum and skips everything that is not a
    regular file. Much faster than :mod:`tarfile` on archives of many small images.
    """
    buf = _Buffer(chunks)
    long_name: str | None = None
    while True:
        header = buf.take(512)
        if header == bytes(512):
            return
        checksum = sum(header[:148]) + 256 + sum(header[156:])
        if _octal(header[148:156]) != checksum:
            raise ValueError("bad tar header checksum (not a tar archive, or damaged)")
        size = _octal(header[124:136])
        kind = header[156:157]
        data = buf.take(size)
        buf.take(-size % 512)
        if kind in (b"L", b"x"):
            long_name = (data.rstrip(b"\0").decode("utf-8", "surrogateescape") if kind == b"L"
                         else _pax_path(data))
            continue
        name = header[:100].split(b"\0", 1)[0]
        if header[257:263] == b"ustar\0" and header[345] != 0:  # POSIX prefix field
            name = header[345:500].split(b"\0", 1)[0] + b"/" + name
        path = long_name or name.decode("utf-8", "surrogateescape")
        long_name = None
        if kind in (b"0", b"\0", b"7"):
            yield path.removeprefix("./"), data


def _tar_members(stream: Any, uri: str) -> dict[str, bytes]:
    """``{member path: bytes}`` of every regular file of a (compressed) tar stream."""
    try:
        return dict(iter_tar(decompressed_chunks(stream)))
    except (ValueError, EOFError, OSError, zlib.error, lzma.LZMAError) as err:
        raise SasRayError(f"cannot read archive {uri} ({type(err).__name__}: {err}); check that "
                          "it is a complete .tar/.tar.gz file") from err


def imagefolder_tar(uri: str, files: Files = LOCAL_FILES) -> Source:
    """An ImageFolder packed as a tar (local or ``s3://``), read in one streaming pass; the
    members are held in memory, so extract archives larger than RAM and ingest the folder."""
    if "://" in uri:
        if not files.exists(uri):
            raise SasRayError(f"source {uri} does not exist; check the bucket and key")
    elif not os.path.isfile(uri):
        raise SasRayError(f"source archive {uri} does not exist; pass an existing "
                          f".tar/.tar.gz path or one of: {SOURCE_FORMS}")
    with files.open_input_stream(uri) as stream:
        members = _tar_members(stream, uri)
    return _imagefolder(uri, "encoded", members)
