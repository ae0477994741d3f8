"""Paths and URIs (local or ``s3://``), atomic artifacts and their manifests.

An *artifact* is a directory ``URI/`` holding data files and ``URI/manifest.json``.
The manifest is the commit record: it lists the artifact's files, and it is written last
and atomically (local: temp file + ``os.replace``; S3: a single PUT). A reader trusts only
files listed in a manifest, so a crash mid-write leaves nothing that looks complete.

Writers stage files under ``URI/v-<run id>/``; after the manifest is committed, staging
directories of older or crashed runs are deleted.

One writer at a time: :func:`write_artifact` holds the artifact's lease
(:mod:`sas_ray.io.lease`) from before staging until after the commit.

This module is the I/O layer's face: the file functions of :mod:`sas_ray.io.fs` are
re-exported here, so stages use one name, ``storage``, for both.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from sas_ray.errors import SasRayError
from sas_ray.io import lease
from sas_ray.io.fs import (  # noqa: F401  (re-exported: the I/O layer's face)
    FILES,
    StorageFiles,
    absolute,
    check_writable,
    delete,
    exists,
    explain_s3_error,
    filesystem,
    is_file,
    is_s3,
    join,
    list_files,
    read_bytes,
    read_json,
    s3_endpoint,
    s3_errors,
    s3fs_filesystem,
    write_bytes_atomic,
    write_json_atomic,
)

MANIFEST = "manifest.json"


def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-serialisable object (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("sas-ray", "torch", "torchvision", "ray", "pyarrow", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def read_manifest(uri: str) -> dict[str, Any] | None:
    """The committed manifest of the artifact at ``uri``, or None when there is none."""
    m = join(uri, MANIFEST)
    return read_json(m) if exists(m) else None


def require_manifest(uri: str, stage: str | None = None) -> dict[str, Any]:
    """The manifest at ``uri``; a clear error when missing or of another stage."""
    manifest = read_manifest(uri)
    if manifest is None:
        bucket = "s3://" + uri[len("s3://"):].split("/", 1)[0]
        if is_s3(uri) and not exists(bucket):
            raise SasRayError(f"S3 bucket {bucket} of {uri} does not exist; create the bucket "
                              "or fix the URI")
        raise SasRayError(f"{uri} is not a complete sas-ray artifact (no {MANIFEST}); "
                          "check the path or rerun the stage that writes it")
    if stage is not None and manifest.get("stage") != stage:
        raise SasRayError(f"{uri} holds a '{manifest.get('stage')}' artifact, not '{stage}'; "
                          "pass the output of the right stage")
    return manifest


def artifact_files(uri: str, manifest: dict[str, Any] | None = None) -> list[str]:
    """Full URIs of the files a committed artifact lists."""
    manifest = manifest or require_manifest(uri)
    return [join(uri, f) for f in manifest["files"]]


# Bumped when an algorithm changes what a stage computes for the same settings (2: counter-
# based augmentation streams, torchvision's grey weights, aspect-preserving resize), so
# artifacts of older code are recomputed rather than reused; every downstream fingerprint
# includes its inputs', so one bump reaches them all.
ALGORITHMS = 2


def stage_fingerprint(stage: str, config: Any, inputs: dict[str, str], seed: int | None) -> str:
    return fingerprint({"stage": stage, "config": config, "inputs": inputs, "seed": seed,
                        "algorithms": ALGORITHMS})


def is_fresh(uri: str, fp: str) -> bool:
    """True when a committed artifact at ``uri`` was made from exactly these inputs."""
    manifest = read_manifest(uri)
    return manifest is not None and manifest.get("fingerprint") == fp


@dataclass
class ArtifactWriter:
    """Handle given to a stage while it writes: ``dir`` is where files go, ``meta`` is free-form
    stage metadata that lands in the manifest."""

    uri: str
    dir: str
    meta: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def write_artifact(uri: str, stage: str, *, config: Any = None,
                   inputs: dict[str, str] | None = None, seed: int | None = None,
                   lease_wait_s: float = 0.0,
                   verify: Callable[[str, list[str], dict[str, Any]], None] | None = None
                   ) -> Iterator[ArtifactWriter]:
    """Stage files under ``uri/v-<id>/`` and commit them with a manifest on success.

    The artifact's lease is taken first (a live second writer fails with one line naming
    the holder, after waiting up to ``lease_wait_s``) and checked just before the commit. On
    an exception the staging directory is removed and any previous artifact at ``uri`` stays
    untouched. The manifest: :func:`commit_manifest`; it lists only files that exist.
    ``verify(uri, files, meta)``, when given, sees the files to be listed (relative to
    ``uri``) and the meta just before the commit, and raises to refuse it.
    """
    run_id = f"v-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    staging = join(uri, run_id)
    writer = ArtifactWriter(uri=uri, dir=staging)
    check_writable(uri)
    with lease.held(uri, wait_s=lease_wait_s) as held:
        if not is_s3(uri):  # S3 has no directories; local writers expect w.dir to exist
            os.makedirs(_norm(staging), exist_ok=True)
        try:
            yield writer
        except BaseException:
            with contextlib.suppress(Exception):
                delete(staging)
            raise
        files = [f[len(_norm(uri)) + 1:] for f in list_files(staging)]
        if verify is not None:
            try:
                verify(uri, files, writer.meta)
            except BaseException:
                with contextlib.suppress(Exception):
                    delete(staging)
                raise
        held.check()
        commit_manifest(uri, stage, files, config=config, inputs=inputs, seed=seed,
                        meta=writer.meta)
        _sweep_stale(uri, keep=run_id)


def commit_manifest(uri: str, stage: str, files: list[str], *, config: Any = None,
                    inputs: dict[str, str] | None = None, seed: int | None = None,
                    meta: dict[str, Any] | None = None) -> None:
    """Write the manifest that commits ``files`` (paths relative to ``uri``) as the artifact.

    Records stage, fingerprint (of stage, config, inputs and seed), config, inputs, seed,
    versions, creation time, files and ``meta``.
    """
    inputs = inputs or {}
    write_json_atomic(join(uri, MANIFEST), {
        "stage": stage,
        "fingerprint": stage_fingerprint(stage, config, inputs, seed),
        "config": config,
        "inputs": inputs,
        "seed": seed,
        "versions": versions(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "files": files,
        "meta": meta or {},
    })


def _norm(uri: str) -> str:
    return absolute(uri).rstrip("/")


def _sweep_stale(uri: str, keep: str) -> None:
    """Delete staging dirs of older or crashed writes (best effort)."""
    fs, path = filesystem(uri)
    with contextlib.suppress(Exception):
        for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
            if info.type == pafs.FileType.Directory and info.base_name.startswith("v-") \
                    and info.base_name != keep:
                fs.delete_dir(info.path)
