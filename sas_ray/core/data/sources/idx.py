"""IDX sources: MNIST / Fashion-MNIST files in a directory (``idx:DIR``)."""

from __future__ import annotations

import gzip
import os
import re

import numpy as np

from sas_ray.config import DataConfig
from sas_ray.core.data.files import Files
from sas_ray.core.data.sources import Item, Source, register_source
from sas_ray.errors import SasRayError

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


@register_source("idx")
def idx_source(uri: str, data: DataConfig, seed: int, files: Files) -> Source:
    """``train-images-idx3-ubyte[.gz]`` (+ ``-labels-idx1``, and ``t10k-*`` as test) in a
    directory, local or ``s3://``. Images without a labels file get label ``None``."""
    if "://" in uri:
        names = {p.rsplit("/", 1)[-1]: p for p in files.list_files(uri)}
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
            images = read_idx(files.read_bytes(path))
            labels = read_idx(files.read_bytes(found[(split, "labels")])) \
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
