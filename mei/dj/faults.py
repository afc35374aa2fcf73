"""Faults of a store, told apart from a key's problems.

:func:`fault` tells whether an exception raised while a store was written or read means the
store is out (``"transient"``: connection refused, timeouts, server errors; worth waiting for)
or refuses the work (``"lasting"``: credentials, bucket, permissions, a full disk), rather
than a problem of one key; :func:`reason` says it in a few words. Imports nothing from S3
clients: errors are recognized by their type names and codes (botocore and s3fs on DataJoint
2.x, minio and urllib3 on 0.14, the operating system's for local stores).
"""

from __future__ import annotations

import errno

from ..errors import StoreUnavailableError, error_chain

_LASTING_CODES = {
    "AccessDenied": "refused access",
    "AllAccessDisabled": "refused access",
    "InvalidAccessKeyId": "does not know the access key",
    "SignatureDoesNotMatch": "refused the secret key",
    "ExpiredToken": "refused the credentials (expired)",
    "InvalidToken": "refused the credentials",
    "NoSuchBucket": "has no such bucket",
    "InvalidBucketName": "refused the bucket name",
    "AccountProblem": "refused the account",
}
_TRANSIENT_CODES = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "XMinioServerNotInitialized",
}
_TRANSIENT_NAMES = {
    # botocore / aiobotocore / s3fs
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ProxyConnectionError",
    "FSTimeoutError",
    "ServerDisconnectedError",
    "ClientConnectorError",
    # urllib3 (the minio client) and the standard library
    "MaxRetryError",
    "NewConnectionError",
    "ProtocolError",
    "ServerError",  # minio: an answer with status 5xx
}
_LASTING_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}
_TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EPIPE,
}


def _code(error: BaseException) -> tuple[str, int]:
    """The S3 error code and HTTP status of a botocore ``ClientError`` or minio ``S3Error``."""
    response = getattr(error, "response", None)
    if isinstance(response, dict) and "Error" in response:
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return str(response["Error"].get("Code", "")), int(status or 0)
    code = getattr(error, "code", None)
    if isinstance(code, str) and type(error).__module__.startswith("minio"):
        status = getattr(getattr(error, "response", None), "status", 0)
        return code, int(status or 0)
    return "", 0


def fault(error: BaseException) -> str | None:
    """``"transient"`` if ``error`` (raised while a store was written or read) means the store
    is out for now, ``"lasting"`` if it refuses the work until somebody changes a setting,
    ``None`` if it is not the store's doing."""
    for cause in error_chain(error):
        if isinstance(cause, StoreUnavailableError):
            return "transient" if cause.transient else "lasting"
        code, status = _code(cause)
        if code in _LASTING_CODES or status in (401, 403):
            return "lasting"
        if code in _TRANSIENT_CODES or status >= 500:
            return "transient"
        name = type(cause).__name__
        if name in _TRANSIENT_NAMES or isinstance(cause, (ConnectionError, TimeoutError)):
            return "transient"
        if name == "BucketInaccessible":  # DataJoint 0.14: the bucket is missing
            return "lasting"
        if isinstance(cause, OSError) and cause.errno in _TRANSIENT_ERRNOS:
            return "transient"
        if isinstance(cause, OSError) and cause.errno in _LASTING_ERRNOS:
            return "lasting"
        if isinstance(cause, PermissionError):  # s3fs: AccessDenied, without a cause
            return "lasting"
    return None


def reason(error: BaseException) -> str:
    """What went wrong with the store, in a few words, from ``error``."""
    causes = list(error_chain(error))
    for cause in causes:  # what the store answered, if it answered
        if isinstance(cause, StoreUnavailableError):
            return cause.reason
        code, status = _code(cause)
        if not code and not status:
            continue
        if code in _LASTING_CODES:
            return f"{_LASTING_CODES[code]} ({code})"
        if status == 403 or code == "403":  # a HEAD request's answer has no code
            return "refused the credentials or the access (HTTP 403)"
        if status == 404 or code == "404":
            return "has no such bucket (HTTP 404)"
        return f"answered {code or 'an error'} (HTTP {status})"
    for cause in causes:
        name = type(cause).__name__
        if name in _TRANSIENT_NAMES or isinstance(cause, (ConnectionError, TimeoutError)):
            text = str(cause).splitlines()[0] if str(cause) else ""
            if "://" in text:  # botocore names the object's whole URL: the store says enough
                text = ""
            return f"cannot be reached ({name}{': ' + text if text else ''})"
        if isinstance(cause, OSError) and cause.errno is not None:
            where = f": {cause.filename}" if cause.filename else ""
            what = f"{cause.strerror or cause}{where}"
            if cause.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                return f"cannot be written ({what})"
            if cause.errno in (errno.ENOSPC, errno.EDQUOT):
                return f"is full (no space left on the device{where})"
            return what
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"
