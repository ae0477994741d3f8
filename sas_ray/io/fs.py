"""Files and URIs, local or ``s3://``: paths, reads, atomic writes, deletes, listings.

S3 access goes through s3fs, configured the usual AWS ways (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_DEFAULT_REGION``) plus
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` for S3-compatible endpoints. Every S3 error
becomes one :class:`~sas_ray.errors.SasRayError` line naming the fix (:func:`s3_errors`).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow.fs as pafs

from sas_ray.errors import SasRayError


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


def is_file(uri: str) -> bool:
    fs, path = filesystem(uri)
    with s3_errors(uri):
        return fs.get_file_info(path).type == pafs.FileType.File


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


