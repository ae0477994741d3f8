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
encodes as PNG. :meth:`Source.stream` yields ``(id, payload)`` in the order that is cheapest
to read: id order for payloads held in the items, archive order for a tar, whose members
are read one at a time when streamed (the items then hold no payload). Nothing here
imports Ray or the storage layer: files are read through a
:class:`~sas_ray.core.data.files.Files` (local by default; ingest passes one that reaches S3).

Sources are a registry: a spec ``NAME:ARG`` opens with the opener registered as ``NAME``
(:func:`register_source`; one module per kind in this package); any other spec is an
ImageFolder directory or archive.

ImageFolder layouts (one common wrapper directory is skipped, e.g. ``cifar10/train/...``):
``train/<class>/*.jpg`` + ``test/<class>/*.jpg`` (any of :data:`SPLIT_NAMES`), plain
``<class>/*.jpg`` (split ``train``), or images without a class folder (label ``None``).
Labels index the sorted class names of all splits. Files whose extension is not an image
extension are ignored and reported; so are class directories that hold no image (they are
not classes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sas_ray.config import DataConfig
from sas_ray.core.data.files import LOCAL_FILES, Files

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
    empty_classes: list[str] = field(default_factory=list)  # class dirs without an image
    # ids of each example kind, where the source knows them (synthetic: clean, duplicate, ...)
    kinds: dict[str, list[int]] = field(default_factory=dict)
    # (id, payload) of every item in reading order; None: the items' payloads in id order
    reader: Callable[[], Iterator[tuple[int, Any]]] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def stream(self) -> Iterator[tuple[int, Any]]:
        """``(id, payload)`` of every item, each once, in reading order (see the module)."""
        if self.reader is not None:
            return self.reader()
        return ((i, it.payload) for i, it in enumerate(self.items))


# spec argument (after "NAME:"), data settings, seed, file access -> Source
SourceOpener = Callable[[str, DataConfig, int, Files], Source]
SOURCES: dict[str, SourceOpener] = {}


def register_source(name: str) -> Callable[[SourceOpener], SourceOpener]:
    """Register an opener for specs ``name`` and ``name:ARG``."""
    def add(opener: SourceOpener) -> SourceOpener:
        SOURCES[name] = opener
        return opener
    return add


def open_source(spec: str, data: DataConfig | None = None, seed: int = 0,
                files: Files = LOCAL_FILES) -> Source:
    """Parse a source string (see :data:`SOURCE_FORMS`) and list its images."""
    data = data or DataConfig()
    name, _, arg = spec.partition(":")
    if name in SOURCES and "://" not in spec:
        return SOURCES[name](arg, data, seed, files)
    if spec.lower().endswith(TAR_EXTENSIONS):
        return imagefolder_tar(spec, files)
    return imagefolder_dir(spec, files)


from sas_ray.core.data.sources import idx, synthetic, torchvision_sets  # noqa: E402, F401
from sas_ray.core.data.sources.imagefolder import imagefolder_dir, imagefolder_tar  # noqa: E402
