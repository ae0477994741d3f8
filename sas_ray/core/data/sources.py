"""Image sources: every image of a source, in a stable order, with its split and label.

A :class:`Source` lists :class:`Item` s in *id order*: an item's position is its id in the
shards, so the same source always gets the same ids. The order is

- ImageFolder directory or tar: relative member paths, sorted (a directory and the tar it was
  packed from give the same ids);
- IDX and torchvision: train then test (then unlabeled), in file order;
- synthetic: train then test, in generation order.

An item's ``payload`` is one of three kinds (``Source.kind``): ``encoded`` bytes as found in
the source (tar members), a ``file`` path or ``s3://`` URI to read (directories, read in
parallel by ingest), or raw ``pixels`` (a uint8 array of ``Source.pixel_shape``) that ingest
encodes as PNG. Nothing here imports Ray; pyarrow only for ``s3://`` sources.

ImageFolder layouts (one common wrapper directory is skipped, e.g. ``cifar10/train/...``):
``train/<class>/*.jpg`` + ``test/<class>/*.jpg`` (any of :data:`SPLIT_NAMES`), plain
``<class>/*.jpg`` (split ``train``), or images without a class folder (label ``None``).
Labels index the sorted class names of all splits. Files whose extension is not an image
extension are ignored and reported.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from sas_ray.config import DataConfig
from sas_ray.errors import SasRayError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff",
                    ".webp")
TAR_EXTENSIONS = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
SPLIT_NAMES = ("train", "test", "val", "valid", "validation", "unlabeled", "unlabelled")
SOURCE_FORMS = ("synthetic, an ImageFolder directory or .tar/.tar.gz/.tgz (local or s3://), "
                "idx:DIR, torchvision:NAME[:ROOT]")


class Item(NamedTuple):
    """One image of a source: ``name`` is its path inside the source (for messages)."""

    name: str
    split: str
    label: int | None
    payload: Any  # bytes (encoded) | str (file) | np.ndarray (pixels)


@dataclass
class Source:
    """The images of a source in id order, plus what ingest reports about it."""

    spec: str
    kind: str  # "encoded" | "file" | "pixels"
    class_names: list[str]
    items: list[Item]
    pixel_shape: tuple[int, ...] | None = None  # kind "pixels": shape of every payload
    ignored: list[str] = field(default_factory=list)  # non-image files skipped by extension

    def __len__(self) -> int:
        return len(self.items)


def open_source(spec: str, data: DataConfig | None = None, seed: int = 0) -> Source:
    """Parse a source string (see :data:`SOURCE_FORMS`) and list its images."""
    data = data or DataConfig()
    if spec == "synthetic":
        return synthetic_source(data, seed)
    if spec.startswith("idx:"):
        return idx_source(spec[len("idx:"):])
    if spec.startswith("torchvision:"):
        name, _, root = spec[len("torchvision:"):].partition(":")
        return torchvision_source(name, root or "data", data.download)
    if spec.lower().endswith(TAR_EXTENSIONS):
        return imagefolder_tar(spec)
    return imagefolder_dir(spec)


def read_file(uri: str) -> bytes:
    """The bytes of a local file or ``s3://`` object."""
    if uri.startswith("s3://"):
        from sas_ray.io import storage

        return storage.read_bytes(uri)
    with open(uri, "rb") as f:
        return f.read()


# --- synthetic ---------------------------------------------------------------------------

def _hsv_to_rgb(h: np.ndarray, s: float, v: float) -> np.ndarray:
    """``(n,)`` hues in [0, 1) at one saturation/value -> ``(n, 3)`` RGB in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0]) + h[:, None] * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def synthetic_images(num_classes: int, per_class: int, size: int, seed: int,
                     split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images with known latent classes: ``(n, size, size, 3)`` uint8 and ``(n,)`` labels.

    Class ``k`` of ``K`` is a prototype: a grating of hue ``k/K``, orientation ``pi*k/K`` and
    2 or 4 cycles per image. Each image shifts the grating by a random phase, scales its
    brightness by U(0.8, 1.2), pastes a random grey square (a class-independent distractor)
    at a random place and adds N(0, 0.06) noise. Classes are interleaved (label = index mod
    K). Deterministic in ``(seed, split)``; train and test share the prototypes.
    """
    if num_classes < 1 or per_class < 1 or size < 4:
        raise SasRayError(f"synthetic data needs classes >= 1, images per class >= 1 and size "
                          f">= 4 (got {num_classes}, {per_class}, {size}); fix --data.synthetic_*")
    n = num_classes * per_class
    labels = np.arange(n) % num_classes
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    yy, xx = np.mgrid[0:size, 0:size] / size
    theta = np.pi * labels / num_classes
    cycles = 2.0 + 2.0 * (labels % 2)
    phase = rng.uniform(0.0, 2 * np.pi, n)
    wave = (xx[None] * np.cos(theta)[:, None, None] + yy[None] * np.sin(theta)[:, None, None])
    grating = 0.5 + 0.5 * np.sin(2 * np.pi * cycles[:, None, None] * wave + phase[:, None, None])
    colour = _hsv_to_rgb(labels / num_classes, 0.75, 0.9)
    img = colour[:, None, None, :] * (0.35 + 0.65 * grating[..., None])
    img *= rng.uniform(0.8, 1.2, (n, 1, 1, 1))
    side = max(2, size // 4)
    corner = rng.integers(0, size - side + 1, (n, 2))
    grey = rng.uniform(0.0, 1.0, n)
    for i in range(n):
        y, x = corner[i]
        img[i, y:y + side, x:x + side, :] = grey[i]
    img += rng.normal(0.0, 0.06, img.shape)
    return (np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8), labels


def synthetic_source(data: DataConfig, seed: int) -> Source:
    """The built-in synthetic data set (see :func:`synthetic_images`)."""
    k = data.synthetic_classes
    class_names = [f"class{c}" for c in range(k)]
    items = []
    for split, per_class in (("train", data.synthetic_train_per_class),
                             ("test", data.synthetic_test_per_class)):
        if per_class == 0:
            continue
        pixels, labels = synthetic_images(k, per_class, data.synthetic_size, seed, split)
        items += [Item(f"{split}/{class_names[y]}/{i:06d}", split, int(y), pixels[i])
                  for i, y in enumerate(labels)]
    size = data.synthetic_size
    return Source("synthetic", "pixels", class_names, items, pixel_shape=(size, size, 3))


# --- ImageFolder (directory or tar) -------------------------------------------------------

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


def imagefolder_dir(uri: str) -> Source:
    """An ImageFolder directory, local or ``s3://``; images are read later, by path."""
    if uri.startswith("s3://"):
        from sas_ray.io import storage

        prefix = uri.rstrip("/") + "/"
        paths = [p for p in storage.list_files(uri) if p.startswith(prefix)]
        if not paths and not storage.exists(uri):
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
    return _imagefolder(uri, "file", dict(_walk(root)))


def _walk(root: str) -> Iterator[tuple[str, str]]:
    """``(relative path with "/", full path)`` of every file below ``root``."""
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


def imagefolder_tar(uri: str) -> Source:
    """An ImageFolder packed as a tar (local or ``s3://``), read in one streaming pass; the
    members are held in memory, so extract archives larger than RAM and ingest the folder."""
    if uri.startswith("s3://"):
        from sas_ray.io import storage

        fs, path = storage.filesystem(uri)
        with storage.s3_errors(uri):
            if not storage.exists(uri):
                raise SasRayError(f"source {uri} does not exist; check the bucket and key")
            with fs.open_input_stream(path) as stream:
                files = _tar_members(stream, uri)
    else:
        if not os.path.isfile(uri):
            raise SasRayError(f"source archive {uri} does not exist; pass an existing "
                              f".tar/.tar.gz path or one of: {SOURCE_FORMS}")
        with open(uri, "rb") as stream:
            files = _tar_members(stream, uri)
    return _imagefolder(uri, "encoded", files)


# --- IDX (MNIST / Fashion-MNIST files) -----------------------------------------------------

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
IDX_FILE = re.compile(r"^(train|t10k|test)[-_.](images|labels)[-_.]idx([13])[-_.]ubyte(\.gz)?$")


def read_idx(data: bytes) -> np.ndarray:
    """Parse IDX bytes (gzip-compressed or raw): magic ``0 0 dtype ndim``, big-endian uint32
    dims, then the values in C order."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise ValueError("not an IDX file (bad magic number)")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[data[2]])
    count = int(np.prod(dims))
    offset = 4 + 4 * ndim
    if len(data) - offset != count * dtype.itemsize:
        raise ValueError(f"IDX header says {dims} but the file holds "
                         f"{len(data) - offset} bytes of values")
    return np.frombuffer(data, dtype, count=count, offset=offset).reshape(dims)


def idx_source(uri: str) -> Source:
    """``train-images-idx3-ubyte[.gz]`` (+ ``-labels-idx1``, and ``t10k-*`` as test) in a
    directory, local or ``s3://``. Images without a labels file get label ``None``."""
    from_s3 = uri.startswith("s3://")
    if from_s3:
        from sas_ray.io import storage

        names = {p.rsplit("/", 1)[-1]: p for p in storage.list_files(uri)}
    elif os.path.isdir(uri):
        names = {n: os.path.join(uri, n) for n in os.listdir(uri)}
    else:
        raise SasRayError(f"IDX directory {uri} does not exist; pass idx:DIR with "
                          "train-images-idx3-ubyte[.gz] files in DIR")
    found: dict[tuple[str, str], str] = {}
    for name, path in sorted(names.items()):
        if m := IDX_FILE.match(name):
            split = "train" if m.group(1) == "train" else "test"
            found.setdefault((split, m.group(2)), path)
    if not any(kind == "images" for _, kind in found):
        raise SasRayError(f"no IDX image files in {uri}; expected train-images-idx3-ubyte[.gz] "
                          "and t10k-images-idx3-ubyte[.gz]")
    items, labels_seen, shape = [], set(), None
    for split in ("train", "test"):
        if (split, "images") not in found:
            continue
        path = found[(split, "images")]
        try:
            images = read_idx(read_file(path))
            labels = read_idx(read_file(found[(split, "labels")])) \
                if (split, "labels") in found else None
        except (ValueError, OSError, EOFError) as err:
            raise SasRayError(f"cannot read IDX file in {uri} ({err}); replace the damaged "
                              "file") from err
        if images.ndim != 3 or images.dtype != np.uint8:
            raise SasRayError(f"{path} holds {images.dtype} {images.shape}, not uint8 (N, H, W) "
                              "images; pass an images-idx3 file")
        if labels is not None and labels.shape != (len(images),):
            raise SasRayError(f"{split} labels hold {labels.shape[0]} entries for "
                              f"{len(images)} images; pass matching IDX files")
        if shape is not None and images.shape[1:] != shape:
            raise SasRayError(f"train and test IDX images differ in size ({shape} vs "
                              f"{images.shape[1:]}); pass files of one data set")
        shape = images.shape[1:]
        for i in range(len(images)):
            label = None if labels is None else int(labels[i])
            items.append(Item(f"{split}/{i:06d}", split, label, images[i]))
        if labels is not None:
            labels_seen.update(np.unique(labels).tolist())
    class_names = [str(c) for c in range(int(max(labels_seen)) + 1)] if labels_seen else []
    return Source(f"idx:{uri}", "pixels", class_names, items, pixel_shape=shape)


# --- torchvision --------------------------------------------------------------------------

TORCHVISION_SPLITS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    **{name: [("train", {"train": True}), ("test", {"train": False})]
       for name in ("CIFAR10", "CIFAR100", "MNIST", "FashionMNIST")},
    "STL10": [("train", {"split": "train"}), ("test", {"split": "test"}),
              ("unlabeled", {"split": "unlabeled"})],
}


def _torchvision_arrays(ds: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(N, H, W[, 3])`` uint8 pixels and ``(N,)`` labels (-1 = none) of a torchvision set."""
    data = np.asarray(ds.data)
    if data.ndim == 4 and data.shape[1] == 3:  # STL10 stores (N, 3, H, W)
        data = data.transpose(0, 2, 3, 1)
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = ds.labels
    return np.ascontiguousarray(data, dtype=np.uint8), np.asarray(labels).astype(np.int64)


def torchvision_source(name: str, root: str, download: bool) -> Source:
    """A torchvision data set by class name, loaded from ``root`` (downloaded only if asked)."""
    if name not in TORCHVISION_SPLITS:
        raise SasRayError(f"unknown torchvision data set '{name}'; use one of "
                          f"{', '.join(TORCHVISION_SPLITS)}")
    import torchvision.datasets

    cls = getattr(torchvision.datasets, name)
    items, class_names, shape = [], [], None
    for split, kwargs in TORCHVISION_SPLITS[name]:
        try:
            ds = cls(root, download=download, **kwargs)
        except Exception as err:
            if download:
                raise SasRayError(f"downloading torchvision {name} into {root} failed "
                                  f"({type(err).__name__}: {err}); check the network, or put "
                                  f"the files under {root}") from err
            raise SasRayError(f"torchvision {name} ({split}) is not under {root}; pass "
                              f"--data.download true to fetch it, or torchvision:{name}:ROOT "
                              "pointing at a copy") from err
        pixels, labels = _torchvision_arrays(ds)
        class_names = list(ds.classes)
        shape = pixels.shape[1:]
        items += [Item(f"{split}/{i:06d}", split, None if y < 0 else int(y), pixels[i])
                  for i, y in enumerate(labels)]
    return Source(f"torchvision:{name}", "pixels", class_names, items, pixel_shape=shape)
