"""Paths and URIs (local or ``s3://``), atomic artifacts and their manifests.

An *artifact* is a directory ``URI/`` holding data files and ``URI/manifest.json``.
The manifest is the commit record: it lists the artifact's files, and it is written last
and atomically (local: temp file + ``os.replace``; S3: a single PUT). A reader trusts only
files listed in a manifest, so a crash mid-write leaves nothing that looks complete.

Writers stage files under ``URI/v-<run id>/``; after the manifest is committed, staging
directories of older or crashed runs are deleted.

S3 access goes through s3fs, configured the usual AWS ways (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_DEFAULT_REGION``) plus
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` for S3-compatible endpoints.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from sas_ray.errors import SasRayError

MANIFEST = "manifest.json"


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or URI with ``/``."""
    out = uri.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def absolute(uri: str) -> str:
    """``uri`` unchanged on S3, else as an absolute path (Ray Tune runs each trial in a working
    directory of its own, where a relative path means something else)."""
    return uri if is_s3(uri) else os.path.abspath(uri)


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3fs_filesystem() -> Any:
    """An ``s3fs.S3FileSystem`` honouring the AWS environment and a custom endpoint.

    Failed requests (connection errors, throttling, 5xx) are retried with exponential backoff:
    ``AWS_MAX_ATTEMPTS`` attempts (default 5) in ``AWS_RETRY_MODE`` (default ``standard``).
    """
    import s3fs

    retries = {"max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", "5")),
               "mode": os.environ.get("AWS_RETRY_MODE", "standard")}
    kwargs: dict[str, Any] = {"config_kwargs": {"retries": retries}}
    if endpoint := s3_endpoint():
        kwargs["endpoint_url"] = endpoint
    return s3fs.S3FileSystem(**kwargs)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for ``uri`` and the path inside it (``bucket/key`` on S3)."""
    if is_s3(uri):
        fs = pafs.PyFileSystem(pafs.FSSpecHandler(s3fs_filesystem()))
        return fs, uri[len("s3://"):].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def explain_s3_error(uri: str, err: BaseException) -> SasRayError:
    """Turn a botocore/s3fs failure into one actionable line."""
    text = f"{type(err).__name__}: {err}"
    low = text.lower()
    if "nosuchbucket" in low or "bucket does not exist" in low:
        fix = "create the bucket or fix the URI"
    elif any(s in low for s in ("invalidaccesskeyid", "signaturedoesnotmatch", "accessdenied",
                                 "forbidden", "403", "credentials")):
        fix = "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for this bucket"
    elif any(s in low for s in ("connect", "endpoint", "timeout", "unreachable")):
        fix = "check the network and AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL"
    else:
        fix = "check the URI, credentials and endpoint"
    return SasRayError(f"S3 access to {uri} failed ({text.splitlines()[0][:200]}); {fix}")


@contextlib.contextmanager
def s3_errors(uri: str) -> Iterator[None]:
    """Re-raise S3 client errors on ``uri`` as a :class:`SasRayError`."""
    try:
        yield
    except SasRayError:
        raise
    except (OSError, Exception) as err:  # botocore raises many unrelated types
        if is_s3(uri):
            raise explain_s3_error(uri, err) from err
        raise


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    with s3_errors(uri):
        return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with s3_errors(uri), fs.open_input_stream(path) as f:
        return f.read()


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write a whole file so readers see either the old or the new content, never a part."""
    fs, path = filesystem(uri)
    with s3_errors(uri):
        if is_s3(uri):  # a single PUT is atomic on S3
            with fs.open_output_stream(path) as f:
                f.write(data)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json_atomic(uri: str, obj: Any) -> None:
    write_bytes_atomic(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def delete(uri: str) -> None:
    """Remove a file or directory tree; missing is fine."""
    fs, path = filesystem(uri)
    with s3_errors(uri):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            fs.delete_file(path)


def list_files(uri: str) -> list[str]:
    """All files below ``uri`` (recursive), as URIs/paths sorted by name."""
    fs, path = filesystem(uri)
    with s3_errors(uri):
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    prefix = "s3://" if is_s3(uri) else ""
    return sorted(prefix + i.path for i in infos if i.type == pafs.FileType.File)


class StorageFiles:
    """:class:`sas_ray.core.data.files.Files` over local paths and ``s3://`` URIs, with this
    module's retries and one-line S3 errors; the file access that ingest gives sources."""

    exists = staticmethod(exists)
    read_bytes = staticmethod(read_bytes)
    list_files = staticmethod(list_files)

    @staticmethod
    def open_input_stream(uri: str) -> Any:
        fs, path = filesystem(uri)
        with s3_errors(uri):
            return fs.open_input_stream(path)


FILES = StorageFiles()


def check_writable(uri: str) -> None:
    """Fail early, with the fix, when ``uri`` cannot be written."""
    probe = join(uri, f".write-probe-{uuid.uuid4().hex[:8]}")
    try:
        write_bytes_atomic(probe, b"")
        delete(probe)
    except SasRayError:
        raise
    except OSError as err:
        raise SasRayError(f"cannot write to {uri} ({err.strerror or err}); choose a writable "
                          "output path or fix its permissions") from err


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


def stage_fingerprint(stage: str, config: Any, inputs: dict[str, str], seed: int | None) -> str:
    return fingerprint({"stage": stage, "config": config, "inputs": inputs, "seed": seed})


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
                   inputs: dict[str, str] | None = None,
                   seed: int | None = None) -> Iterator[ArtifactWriter]:
    """Stage files under ``uri/v-<id>/`` and commit them with a manifest on success.

    On an exception the staging directory is removed and any previous artifact at ``uri``
    stays untouched. The manifest: :func:`commit_manifest`.
    """
    run_id = f"v-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    staging = join(uri, run_id)
    writer = ArtifactWriter(uri=uri, dir=staging)
    check_writable(uri)
    if not is_s3(uri):  # S3 has no directories; local writers expect w.dir to exist
        os.makedirs(_norm(staging), exist_ok=True)
    try:
        yield writer
    except BaseException:
        with contextlib.suppress(Exception):
            delete(staging)
        raise
    files = [f[len(_norm(uri)) + 1:] for f in list_files(staging)]
    commit_manifest(uri, stage, files, config=config, inputs=inputs, seed=seed, meta=writer.meta)
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
