"""ImageFolder sources: a directory or a (compressed) tar of ``[split/]class/image`` files.

A tar is read in two streaming passes and never held whole: the first lists its members
(headers only; member data is skipped, though a compressed stream is still decompressed),
which fixes the ids (sorted paths) and labels; the second, :meth:`Source.stream`, yields
each image member's bytes in archive order, one member at a time. Memory is bounded by the
largest member plus one read chunk, whatever the archive's size. A member path that occurs
more than once counts with its last copy (as extraction would leave it). The second pass
checks that it sees the members of the first, in the same order.
"""

from __future__ import annotations

import bisect
import bz2
import functools
import gzip
import hashlib
import lzma
import os
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, NamedTuple

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

CHUNK = 1 << 20  # bytes read from a stream at a time
_SPLITS = {name: name for name in SPLIT_NAMES}  # one string object per split name, shared
ListDirs = Callable[[str], list[str]]  # relative dir ("" = root) -> names of its subdirectories


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _wrapper_depth(paths: list[str]) -> int:
    """Leading path parts shared by every path and skipped (a wrapper such as ``cifar10/``):
    one more while every path is at least 3 parts deeper and the part is not a split name.
    (The parts shared by every path are those shared by the smallest and largest path.)"""
    if not paths:
        return 0
    low, high = min(paths).split("/"), max(paths).split("/")
    min_parts = 1 + min(p.count("/") for p in paths)
    depth = 0
    while (min_parts >= depth + 3 and low[depth] == high[depth]
           and low[depth] not in SPLIT_NAMES):
        depth += 1
    return depth


def folder_layout(paths: list[str]) -> list[tuple[str, str, str | None]]:
    """Split and class of each relative image path: ``[(path, split, class or None)]``.

    A wrapper directory shared by every path (and not a split name) is skipped while paths
    are at least 3 levels deep, so ``cifar10/train/cat/1.jpg`` reads as ``train/cat/1.jpg``.
    """
    return _layout(paths)[0]


def _layout(paths: list[str]) -> tuple[list[tuple[str, str, str | None]], int]:
    """:func:`folder_layout` and the wrapper's depth."""
    depth = _wrapper_depth(paths)
    split_layout = any(len(p) >= 2 and p[0] in SPLIT_NAMES
                       for p in (path.split("/", depth + 1)[depth:] for path in paths))
    out = []
    for path in paths:  # one path's parts at a time: listing millions of paths stays small
        p = path.split("/")[depth:]
        if split_layout:
            if len(p) < 2 or p[0] not in SPLIT_NAMES:
                raise SasRayError(f"'{path}' is outside the split folders (train/, test/, ...) "
                                  "that the rest of the source uses; move it into a split "
                                  "folder or remove it")
            split, rest = _SPLITS[p[0]], p[1:]
        else:
            split, rest = "train", p
        out.append((path, split, rest[0] if len(rest) >= 2 else None))
    return out, depth


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def empty_class_dirs(images: list[str], depth: int, list_dirs: ListDirs) -> list[str]:
    """Directories at the class level (``[wrapper/][split/]class``; the wrapper: the first
    ``depth`` parts of every path) below which no image lies, sorted; hidden directories
    are not looked at."""
    wrapper = "/".join(images[0].split("/")[:depth]) if images else ""
    full: set[str] = set()  # every directory that has an image below it
    for parent in {p.rpartition("/")[0] for p in images}:
        while parent and parent not in full:
            full.add(parent)
            parent = parent.rpartition("/")[0]
    split_dirs = [_join(wrapper, s) for s in list_dirs(wrapper) if s in SPLIT_NAMES]
    parents = split_dirs if split_dirs else [wrapper]
    return sorted(d for parent in parents for name in list_dirs(parent)
                  if not name.startswith(".") and (d := _join(parent, name)) not in full)


def _imagefolder(spec: str, kind: str, files: dict[str, Any], list_dirs: ListDirs) -> Source:
    """Build a source from ``{relative path: payload}`` of every file in the folder/archive
    and the directories' listing."""
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
    layout, depth = _layout(images)
    class_names = sorted({c for _, _, c in layout if c is not None})
    index = {c: i for i, c in enumerate(class_names)}
    items = [Item(path, split, None if c is None else index[c], files[path])
             for path, split, c in layout]
    return Source(spec, kind, class_names, items, ignored=ignored,
                  empty_classes=empty_class_dirs(images, depth, list_dirs))


def _local_dirs(root: str, rel: str) -> list[str]:
    try:
        with os.scandir(os.path.join(root, rel)) as entries:
            return [e.name for e in entries if e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def imagefolder_dir(uri: str, files: Files = LOCAL_FILES) -> Source:
    """An ImageFolder directory, local or ``s3://``; images are read later, by path. (S3 has
    no directories, so an S3 source reports no empty class directories.)"""
    if "://" in uri:
        prefix = uri.rstrip("/") + "/"
        paths = [p for p in files.list_files(uri) if p.startswith(prefix)]
        if not paths and not files.exists(uri):
            raise SasRayError(f"source {uri} does not exist; pass an existing S3 prefix or one "
                              f"of: {SOURCE_FORMS}")
        return _imagefolder(uri, "file", {p[len(prefix):]: p for p in paths}, lambda rel: [])
    root = os.path.abspath(uri)
    if not os.path.exists(root):
        raise SasRayError(f"source {uri} does not exist; pass an existing path or one of: "
                          f"{SOURCE_FORMS}")
    if not os.path.isdir(root):
        raise SasRayError(f"source {uri} is a file but not a {'/'.join(TAR_EXTENSIONS)} "
                          "archive; pass an ImageFolder directory or archive")
    return _imagefolder(uri, "file", dict(walk(root)), functools.partial(_local_dirs, root))


class _Prepended:
    """A readable stream whose first bytes were already read into ``head``."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self.head, self.stream = head, stream

    def read(self, n: int = -1) -> bytes:
        if self.head:
            out, self.head = (self.head, b"") if n < 0 else (self.head[:n], self.head[n:])
            return out
        return self.stream.read(n)


_DECOMPRESSORS: dict[bytes, Callable[[Any], BinaryIO]] = {
    b"\x1f\x8b": lambda f: gzip.GzipFile(fileobj=f, mode="rb"),
    b"BZh": bz2.BZ2File,
    b"\xfd7zXZ\x00": lzma.LZMAFile,
}


def decompressed_chunks(stream: BinaryIO, chunk_size: int = CHUNK) -> Iterator[bytes]:
    """Chunks of at most ``chunk_size`` bytes of a file-like object, decompressed when it
    starts with a gzip, bzip2 or xz magic number (concatenated members are followed)."""
    head = stream.read(chunk_size)
    opener = next((op for magic, op in _DECOMPRESSORS.items() if head.startswith(magic)), None)
    reader: Any = stream if opener is None else opener(_Prepended(head, stream))
    if opener is None:
        yield head
    while chunk := reader.read(chunk_size):
        yield chunk


class _Buffer:
    """Bytes from an iterator of chunks, consumed in exact sizes."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks, self.buf, self.pos = chunks, bytearray(), 0

    def _more(self, n: int) -> None:
        chunk = next(self.chunks, None)
        if chunk is None:
            raise EOFError(f"archive ends in the middle of a member ({n} bytes wanted)")
        del self.buf[:self.pos]
        self.buf += chunk
        self.pos = 0

    def take(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n:
            self._more(n)
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    def skip(self, n: int) -> None:
        """Drop ``n`` bytes without keeping more than one chunk."""
        while len(self.buf) - self.pos < n:
            n -= len(self.buf) - self.pos
            self.pos = len(self.buf)
            self._more(n)
        self.pos += n


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


class TarEntry(NamedTuple):
    """A regular file or directory of a tar; ``data`` is None for directories and for files
    whose data was skipped."""

    path: str
    is_dir: bool
    data: bytes | None


def iter_tar(chunks: Iterator[bytes],
             want: Callable[[str], bool] | None = None) -> Iterator[TarEntry]:
    """Every regular file and directory of an uncompressed tar stream, in archive order; a
    file's data is read when ``want(path)`` (default: always) and skipped otherwise.

    Reads 512-byte headers (ustar, GNU and pax: long names via ``L`` members and pax
    ``path`` records), checks each header's checksum and skips every other member type
    (links, devices). Much faster than :mod:`tarfile` on archives of many small images.
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
        if kind in (b"L", b"x"):
            data = buf.take(size)
            buf.skip(-size % 512)
            long_name = (data.rstrip(b"\0").decode("utf-8", "surrogateescape") if kind == b"L"
                         else _pax_path(data))
            continue
        name = header[:100].split(b"\0", 1)[0]
        if header[257:263] == b"ustar\0" and header[345] != 0:  # POSIX prefix field
            name = header[345:500].split(b"\0", 1)[0] + b"/" + name
        path = (long_name or name.decode("utf-8", "surrogateescape")).removeprefix("./")
        long_name = None
        is_file = kind in (b"0", b"\0", b"7")
        data = buf.take(size) if is_file and (want is None or want(path)) else None
        if data is None:
            buf.skip(size)
        buf.skip(-size % 512)
        if is_file:
            yield TarEntry(path, False, data)
        elif kind == b"5" and path.rstrip("/") not in ("", "."):
            yield TarEntry(path.rstrip("/"), True, None)


def _read_tar(uri: str, files: Files, want: Callable[[str], bool]) -> Iterator[TarEntry]:
    """:func:`iter_tar` over the (compressed) archive at ``uri``, errors as one line."""
    try:
        with files.open_input_stream(uri) as stream:
            yield from iter_tar(decompressed_chunks(stream), want)
    except (ValueError, EOFError, OSError, zlib.error, lzma.LZMAError) as err:
        raise SasRayError(f"cannot read archive {uri} ({type(err).__name__}: {err}); check that "
                          "it is a complete .tar/.tar.gz file") from err


def _path_key(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape") + b"\0"


def _stream_members(uri: str, files: Files, names: list[str], repeats: dict[str, int],
                    digest: str) -> Iterator[tuple[int, bytes]]:
    """``(id, bytes)`` of the archive's images in archive order (the second pass); an
    image's id is its position in the sorted ``names``."""
    left = dict(repeats)  # path -> copies still to come; only the last copy counts
    seen = hashlib.sha1()  # of the regular members' paths, as in the first pass

    def image_id(path: str) -> int | None:
        i = bisect.bisect_left(names, path)
        return i if i < len(names) and names[i] == path else None

    def wanted(path: str) -> bool:  # called once per regular member, in order
        seen.update(_path_key(path))
        return image_id(path) is not None

    for entry in _read_tar(uri, files, wanted):
        if entry.is_dir:
            continue
        if entry.path in left:
            left[entry.path] -= 1
            if left[entry.path]:
                continue
        if entry.data is not None:
            yield image_id(entry.path), entry.data  # type: ignore[misc]
    if seen.hexdigest() != digest:
        raise SasRayError(f"archive {uri} changed while it was being read; rerun the ingest")


def imagefolder_tar(uri: str, files: Files = LOCAL_FILES) -> Source:
    """An ImageFolder packed as a tar (local or ``s3://``), streamed (see the module)."""
    if "://" in uri:
        if not files.exists(uri):
            raise SasRayError(f"source {uri} does not exist; check the bucket and key")
    elif not os.path.isfile(uri):
        raise SasRayError(f"source archive {uri} does not exist; pass an existing "
                          f".tar/.tar.gz path or one of: {SOURCE_FORMS}")
    members: dict[str, None] = {}  # regular members, first-seen order
    repeats: Counter[str] = Counter()  # path -> copies, for paths that occur more than once
    children: dict[str, list[str]] = {}
    digest = hashlib.sha1()
    for entry in _read_tar(uri, files, lambda path: False):
        if entry.is_dir:
            parent, _, name = entry.path.rpartition("/")
            children.setdefault(parent, []).append(name)
        else:
            if entry.path in members:
                repeats[entry.path] += 1
            members[entry.path] = None
            digest.update(_path_key(entry.path))
    src = _imagefolder(uri, "encoded", members, lambda rel: children.get(rel, []))
    del members
    src.reader = functools.partial(_stream_members, uri, files, [it.name for it in src.items],
                                   {p: n + 1 for p, n in repeats.items()}, digest.hexdigest())
    return src
