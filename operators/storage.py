"""Storage checked before any work: what a job reads and writes, with one line per problem that names the
config key and the fix, and never a credential.

Every fsspec location is tried the way the job will use it: buckets are asked for (HEAD), manifests listed
and their sizes read, the first manifest's head parsed, and a small file written to the output and deleted
again. On S3 the check's own client waits at most 5 s and botocore retries once, so that a wrong endpoint is
said at once rather than after minutes of retries; the store's passing 500s and 503s are retried as in every
S3 call (`retry_transient`), and a store that keeps failing is a StorageFailure, not a configuration error.
"""
from __future__ import annotations

import json
import os
import posixpath
import uuid

PROBE = ".earmark-probe-"


class StorageError(ValueError):
    """A store cannot be used as configured; the message is one line naming the key and the fix."""


class StorageFailure(RuntimeError):
    """The store kept answering 500/503 through every retry: a failing store, not the configuration's fault."""


# S3's answers that mean "try again": 500 InternalError, 503 SlowDown/ServiceUnavailable, and their kin.
TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "500", "502", "503", "504"}


def transient(e: BaseException) -> bool:
    """Whether an S3 error (botocore's, or s3fs's translation of one) is the store's passing trouble."""
    for x in (e, e.__cause__):
        response = getattr(x, "response", None) or {}
        if response.get("Error", {}).get("Code") in TRANSIENT_CODES or \
                response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (500, 502, 503, 504):
            return True
    return False


def retry_transient() -> None:
    """Make s3fs retry 500 and 503 answers in every call (listings, manifests, audio, commits, markers), with
    its own backoff: it retries SlowDown by message and nothing else (`_error_wrapper`), so one 500 InternalError
    (which S3 documents as retryable) would end a listing, a fetch or a commit. s3fs's hook for it is
    process-wide; botocore's own retries (2 to 5 attempts) come first, s3fs's 5 around them."""
    try:
        import s3fs.core
    except ImportError:  # no S3 in this install
        return
    s3fs.core.set_custom_error_handler(transient)


def problem(e: BaseException, key: str, uri: str) -> Exception:
    """The exception a failed storage check raises: a failing store, or a one-line StorageError."""
    if transient(e):
        code = next((x.response["Error"].get("Code") for x in (e, e.__cause__) if getattr(x, "response", None)), "")
        return StorageFailure(f"{uri}: the store still answers {code or 'an error'} after every retry "
                              f"({key}); the job did no work: run it again when the store is healthy")
    return StorageError(explain(e, key, uri))


def quick_fs(uri: str):
    """(filesystem, path) for checks: fast-failing on S3, the usual one elsewhere."""
    import fsspec

    if uri.startswith(("s3://", "s3a://")):
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True, config_kwargs={
            "connect_timeout": 5, "read_timeout": 10, "retries": {"max_attempts": 1, "mode": "standard"}})
        return fs, uri.split("://", 1)[1]
    return fsspec.core.url_to_fs(uri)


def _redact(text: str) -> str:
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"):
        value = os.environ.get(name)
        if value:
            text = text.replace(value, "***")
    return text


def explain(e: BaseException, key: str, uri: str) -> str:
    """One line for a storage failure at `uri`, configured under `key`."""
    bucket = uri.split("://", 1)[1].split("/", 1)[0] if "://" in uri else None
    names = {type(x).__name__ for x in (e, e.__cause__, e.__context__) if x is not None}
    text = " ".join(str(x) for x in (e, e.__cause__) if x is not None)
    code = getattr(e.__cause__ or e, "response", {}).get("Error", {}).get("Code", "")
    if names & {"NoCredentialsError", "PartialCredentialsError", "NoAuthTokenError"}:
        return (f"{key}: no AWS credentials to read {uri}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, or run where an instance role gives them")
    if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException") or \
            "region" in text.lower() and ("wrong" in text.lower() or "expecting" in text.lower()):
        return (f"{key}: bucket {bucket!r} is in another region than the client's "
                f"({os.environ.get('AWS_DEFAULT_REGION', 'default')}); set storage.region to the bucket's region")
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionRefusedError", "ClientConnectorError",
                "ConnectionClosedError", "ReadTimeoutError"}:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3", "the S3 endpoint")
        return (f"{key}: cannot reach {endpoint} for {uri}; check storage.endpoint_url (and that the store is "
                "running and reachable from here)")
    if isinstance(e, PermissionError) or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        need = "s3:PutObject and s3:DeleteObject" if key == "output" else "s3:ListBucket and s3:GetObject"
        return (f"{key}: access denied to {uri}; give these credentials {need} on it (or use credentials "
                "that have them)" if bucket else f"{key}: permission denied for {uri}; make it readable/writable")
    if code == "NoSuchBucket" or "bucket does not exist" in text.lower():
        return f"{key}: no such bucket {bucket!r} (in {uri}); check the name or create the bucket"
    return _redact(f"{key}: cannot use {uri}: {type(e).__name__}: {text}")


def _bucket(fs, path: str, key: str, uri: str) -> None:
    """Ask an S3 bucket whether it is there and ours (a glob in a missing bucket just finds nothing)."""
    name = path.split("/", 1)[0]
    try:
        fs.call_s3("head_bucket", Bucket=name)
    except FileNotFoundError:  # HEAD answers a bare 404, not NoSuchBucket
        raise StorageError(f"{key}: no such bucket {name!r} (in {uri}); check the name or create the bucket") from None
    except Exception as e:  # noqa: BLE001 - every failure becomes one line
        raise problem(e, key, uri) from None


def check_manifest(fs, path: str, uri: str) -> None:
    """A manifest holds rows in its format: not empty, and its head parses."""
    import pyarrow.parquet as pq

    if fs.size(path) == 0:
        raise StorageError(f"input: {uri} is empty (0 bytes); remove it from input or write its rows")
    if uri.endswith(".parquet"):
        try:
            with fs.open(path, "rb") as f:
                pq.ParquetFile(f)
        except Exception:  # noqa: BLE001 - whatever pyarrow says, it is not a parquet file
            raise StorageError(f"input: {uri} is not a parquet file (no parquet footer); give .parquet files only "
                               "for parquet manifests") from None
        return
    with fs.open(path, "rb") as f:
        head = f.read(1 << 16)
    lines = [x for x in head.split(b"\n") if x.strip()]
    if len(head) == 1 << 16 and len(lines) > 1:
        lines.pop()  # cut off by the read
    # One bad line is that row's error (read/bad_json), not the manifest's: refuse only a file whose head
    # holds no JSON object at all (a CSV, a binary, a JSON array).
    if not any(_is_object(x) for x in lines):
        first = lines[0][:40] if lines else b""
        raise StorageError(f"input: {uri} is not JSON lines: no line of its head is a JSON object "
                           f"({first!r}); a manifest line is {{\"audio\": \"<path or URI>\", ...}}")


def _is_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def check_input(spec: str | list[str], key: str = "input") -> list[str]:
    """The manifests `spec` names, checked; raises StorageError."""
    from operators.read import expand

    found: list[str] = []
    for item in [spec] if isinstance(spec, str) else spec:
        fs, path = quick_fs(item)
        if item.startswith(("s3://", "s3a://")):
            _bucket(fs, path, key, item)
        try:
            files = expand(item)
        except ValueError as e:  # an unsupported format
            raise StorageError(f"{key}: {e}") from None
        except Exception as e:  # noqa: BLE001
            raise problem(e, key, item) from None
        if not files:
            raise StorageError(f"{key}: no manifest matches {item!r}; give a .jsonl/.parquet file, glob or list, or "
                               "a job's output folder")
        found += files
    for uri in found[:1]:  # the first: a wrong kind of file shows there
        fs, path = quick_fs(uri)
        try:
            check_manifest(fs, path, uri)
        except StorageError:
            raise
        except Exception as e:  # noqa: BLE001
            raise problem(e, key, uri) from None
    return found


def check_output(uri: str) -> None:
    """Write a small file where the job will write, and delete it."""
    fs, path = quick_fs(uri)
    root = path.rstrip("/")
    if uri.startswith(("s3://", "s3a://")):
        _bucket(fs, root, "output", uri)
    probe = posixpath.join(root, PROBE + uuid.uuid4().hex[:8])
    try:
        fs.makedirs(root, exist_ok=True)
        fs.pipe(probe, b"earmark")
        fs.rm(probe)
    except Exception as e:  # noqa: BLE001
        raise problem(e, "output", uri) from None
