"""The store of an MEI table's files: checked before work starts, its faults told apart.

A lab keeps its MEI files in a store named in the table's definition (``minio`` in the
original library's tables): a local folder (``protocol: file``) or an S3 bucket (MinIO, AWS,
Ceph...; DataJoint 2.x reaches it through s3fs, 0.14 through the minio client).

- :func:`check_store` makes sure, in a few seconds at most, that the store is configured,
  reachable, has its bucket, accepts the credentials and takes a file, before any key is
  reserved; it raises :class:`mei.errors.StoreUnavailableError` with one line saying what is
  wrong.
- :func:`wait_for_store` checks again until the store is back (after an outage).

:func:`mei.dj.faults.fault` tells a store's faults from a key's.
"""

from __future__ import annotations

import errno
import secrets
import time
from pathlib import Path
from typing import Any

import datajoint as dj

from ..errors import StoreUnavailableError
from .backend import backend
from .faults import fault, reason

CONNECT_TIMEOUT = 3.0
"""Seconds :func:`check_store` waits for the store's endpoint to answer a connection."""
READ_TIMEOUT = 10.0
"""Seconds :func:`check_store` waits for an answer to one request."""


# --------------------------------------------------------------------------- settings
def store_spec(name: str) -> dict[str, Any]:
    """The settings of the store ``name`` (DataJoint's, with its defaults)."""
    stores = dj.config.get("stores") or {}
    if backend().generation == 2:
        try:
            return dict(dj.config.get_store_spec(name))
        except dj.DataJointError as e:
            if name not in stores:
                raise KeyError(name) from None
            raise StoreUnavailableError(
                f"the store {name!r} is misconfigured: {e}",
                store=name,
                reason=str(e),
            ) from None
    if name not in stores:
        raise KeyError(name)
    return dict(stores[name])


def _endpoint_url(spec: dict[str, Any]) -> str:
    endpoint = str(spec.get("endpoint", ""))
    if endpoint.startswith(("http://", "https://")):
        return endpoint
    return ("https" if spec.get("secure", backend().generation == 2) else "http") + "://" + endpoint


def describe(name: str, spec: dict[str, Any]) -> str:
    """``'minio' (s3 http://host:9000, bucket 'mei', location 'lab')``, without secrets."""
    protocol = spec.get("protocol", "file")
    if protocol == "s3":
        return (
            f"{name!r} (s3 {_endpoint_url(spec)}, bucket {spec.get('bucket')!r}, "
            f"location {spec.get('location', '')!r})"
        )
    return f"{name!r} ({protocol} {spec.get('location')})"


# --------------------------------------------------------------------------- the check
def check_store(table: Any) -> None:
    """Raise :class:`mei.errors.StoreUnavailableError` unless ``table``'s store
    (``table.storage``) takes files now: configured, reachable, its bucket there, the
    credentials accepted, a probe file written and removed. Takes a few seconds at most
    (:data:`CONNECT_TIMEOUT`, no retries). Tables without a store pass."""
    name = getattr(table, "storage", None)
    if not name:
        return
    try:
        spec = store_spec(name)
    except KeyError:
        raise StoreUnavailableError(
            f"the store {name!r} of {type(table).__name__} (its MEI files) is not configured: "
            "set dj.config['stores'] (DJ_STORES, datajoint.json; dj_local_conf.json on "
            'DataJoint 0.14), or `eval "$(mei db env)"` for a local store. No key was reserved',
            store=name,
            reason="not configured",
        ) from None
    try:
        probe(spec)
    except Exception as e:
        kind = fault(e)
        why = str(e) if isinstance(e, ImportError) else reason(e)
        raise StoreUnavailableError(
            f"the store {describe(name, spec)} {why}; no key was reserved",
            store=name,
            reason=why,
            transient=kind == "transient",
        ) from e


def wait_for_store(table: Any, seconds: float) -> bool:
    """Check ``table``'s store until it works again or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    pause = 0.5
    while True:
        try:
            check_store(table)
            return True
        except StoreUnavailableError:
            if time.monotonic() + pause > deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 10.0)


def probe(spec: dict[str, Any]) -> None:
    """Write and remove one small file in the store of ``spec``."""
    protocol = spec.get("protocol", "file")
    if protocol == "file":
        location = Path(str(spec.get("location", "")))
        if not location.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no such folder", str(location))
        path = location / f".mei_probe_{secrets.token_hex(6)}"
        path.write_bytes(b"mei")
        path.unlink()
        return
    if protocol != "s3":
        return  # gcs, azure, plugins: found out when writing
    name = f"{str(spec.get('location', '')).strip('/')}/.mei_probe_{secrets.token_hex(6)}"
    name = name.lstrip("/")
    bucket = str(spec.get("bucket", ""))
    if backend().generation == 2:
        client = _boto_client(spec)
        client.head_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key=name, Body=b"mei")
        client.delete_object(Bucket=bucket, Key=name)
    else:
        import io

        minio_client = _minio_client(spec)
        if not minio_client.bucket_exists(bucket):
            raise StoreUnavailableError(
                f"no bucket {bucket!r}", store="", reason=f"has no such bucket {bucket!r}"
            )
        minio_client.put_object(bucket, name, io.BytesIO(b"mei"), length=3)
        minio_client.remove_object(bucket, name)


def _boto_client(spec: dict[str, Any]) -> Any:
    """A botocore S3 client for ``spec`` with short timeouts and no retries (DataJoint 2.x
    writes through s3fs, which brings botocore)."""
    try:
        import botocore.session
        import s3fs  # noqa: F401  DataJoint 2.x needs it for every S3 store
        from botocore.config import Config
    except ImportError:
        raise ImportError(
            "needs s3fs, which DataJoint 2.x uses for S3 stores: pip install 'mei[datajoint]' "
            "(or s3fs)"
        ) from None
    session = botocore.session.get_session()
    return session.create_client(
        "s3",
        endpoint_url=_endpoint_url(spec),
        aws_access_key_id=spec.get("access_key") or None,
        aws_secret_access_key=spec.get("secret_key") or None,
        region_name=spec.get("region") or "us-east-1",
        config=Config(
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            retries={"total_max_attempts": 1},
        ),
    )


def _minio_client(spec: dict[str, Any]) -> Any:
    """A minio client for ``spec`` with short timeouts and no retries (DataJoint 0.14)."""
    import minio
    import urllib3

    endpoint = str(spec.get("endpoint", ""))
    secure = bool(spec.get("secure", False))
    if endpoint.startswith(("http://", "https://")):
        secure = endpoint.startswith("https://")
        endpoint = endpoint.split("://", 1)[1]
    return minio.Minio(
        endpoint,
        access_key=spec.get("access_key"),
        secret_key=spec.get("secret_key"),
        secure=secure,
        http_client=urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT),
            retries=urllib3.Retry(total=0),
        ),
    )
