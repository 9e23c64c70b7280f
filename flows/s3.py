"""S3 object storage (AWS S3, MinIO, Ceph, any S3 API) for the display images annotators see: where they go, the
upload, and one-line errors. The only module that calls ``boto3``.

With ``labelstudio.image_storage: s3`` a push renders each selected image's display PNG and uploads it to
``s3://<labelstudio.s3_bucket>/<labelstudio.s3_prefix>/<image_id>.png``; the task's ``data.image`` is that
``s3://`` URI, and the project's S3 source storage (:meth:`flows.ls_client.Adapter.ensure_s3_storage`) lets Label
Studio resolve it for the browser (streamed by Label Studio, or a presigned S3 URL with ``s3_presign: true``).

Bucket and prefix are settings (``params.yaml``); where the S3 API is and the keys come from the environment only,
the variables boto3, DVC (dvc-s3) and Label Studio all read::

    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY   the key (AWS_SESSION_TOKEN too, for temporary credentials)
    AWS_ENDPOINT_URL                           the S3 API of a store that is not AWS (http://minio.lab:9000)
    AWS_DEFAULT_REGION (or AWS_REGION)         the region (default us-east-1)

The secret key is held in a :class:`flows.ls_connection.Secret`; it never appears in reprs, logs or errors.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from flows.ls_connection import Secret

__all__ = ["DENIED_CODES", "S3Error", "S3Location", "existing_keys", "s3_location", "upload_files"]

#: S3 error codes of rejected credentials (boto3's ClientError codes; the same words in dvc's error lines)
DENIED_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken",
                "InvalidClientTokenId")

_CREDENTIALS_FIX = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to a key that may read and write it "
                    "(and AWS_ENDPOINT_URL for MinIO / another S3 server)")


class S3Error(RuntimeError):
    """An S3 request failed; the message is one line naming the bucket, the endpoint and the fix (never a secret)."""


@dataclass(frozen=True)
class S3Location:
    """A bucket and key prefix on an S3 API at ``endpoint`` (None: AWS), with the key to use (``access_key_id`` /
    ``secret_access_key`` / ``session_token``; None: the server's own default chain)."""

    bucket: str
    prefix: str
    endpoint: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: Secret | None = None
    session_token: Secret | None = None

    def key(self, name: str) -> str:
        """The object key of file ``name`` below the prefix."""
        return f"{self.prefix}/{name}" if self.prefix else name

    def uri(self, name: str) -> str:
        """``s3://bucket/prefix/name``: how a task refers to the object."""
        return f"s3://{self.bucket}/{self.key(name)}"

    def where(self) -> str:
        """``s3://bucket/prefix`` and the endpoint, for messages."""
        return f"s3://{self.bucket}/{self.prefix}" + (f" at {self.endpoint}" if self.endpoint else "")

    def client(self):
        """A boto3 S3 client for this location."""
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise S3Error("boto3 is not installed: `pip install 'nucleate[s3]'` for images and DVC remotes "
                          "on S3") from None

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region, aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key.reveal() if self.secret_access_key else None,
            aws_session_token=self.session_token.reveal() if self.session_token else None,
            config=Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"}))


def s3_location(bucket: str, prefix: str, env: Mapping[str, str] | None = None) -> S3Location:
    """The :class:`S3Location` of ``bucket``/``prefix`` (``labelstudio.s3_bucket`` / ``s3_prefix``) with endpoint,
    region and key from ``env`` (default: the process environment). An empty bucket is a ``ValueError`` saying
    which setting to fill in."""
    env = os.environ if env is None else env
    if not bucket:
        raise ValueError("labelstudio.image_storage is s3 but labelstudio.s3_bucket is empty: set it in params.yaml "
                         "(the bucket's endpoint and keys go in AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID / "
                         "AWS_SECRET_ACCESS_KEY)")
    secret, token = env.get("AWS_SECRET_ACCESS_KEY"), env.get("AWS_SESSION_TOKEN")
    return S3Location(
        bucket=bucket, prefix=prefix.strip("/"),
        endpoint=(env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or "").strip() or None,
        region=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1",
        access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
        secret_access_key=Secret(secret) if secret else None, session_token=Secret(token) if token else None)


def _error(exc: Exception, loc: S3Location, what: str) -> S3Error:
    """One line for a failed boto3 call ``what`` on ``loc`` (boto3's own messages carry no secret)."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    head = f"S3 {what} in {loc.where()} failed"
    if isinstance(exc, NoCredentialsError):
        return S3Error(f"{head}: no S3 credentials; {_CREDENTIALS_FIX}")
    if isinstance(exc, EndpointConnectionError):
        return S3Error(f"{head}: the S3 API at {loc.endpoint or 'AWS'} is not reachable; check AWS_ENDPOINT_URL "
                       "and that the server is up")
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in (*DENIED_CODES, "403") or status == 403:
            return S3Error(f"{head}: the credentials were rejected ({code or status}); {_CREDENTIALS_FIX}")
        if code in ("NoSuchBucket", "404") or status == 404:
            return S3Error(f"{head}: bucket {loc.bucket!r} does not exist; create it (`aws s3 mb s3://{loc.bucket}`) "
                           "or fix labelstudio.s3_bucket")
        return S3Error(f"{head}: {code or status}: {exc.response.get('Error', {}).get('Message', '')}".rstrip(": "))
    return S3Error(f"{head}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": "))


def existing_keys(loc: S3Location, client=None) -> set[str]:
    """Keys of every object below ``loc``'s prefix (paginated listing)."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = client or loc.client()
    keys: set[str] = set()
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket,
                                                                 Prefix=f"{loc.prefix}/" if loc.prefix else "")
        for page in pages:
            keys.update(obj["Key"] for obj in page.get("Contents", ()))
    except (BotoCoreError, ClientError) as exc:
        raise _error(exc, loc, "listing") from None
    return keys


def upload_files(loc: S3Location, files: Iterable[tuple[Path, str]], *, content_type: str = "image/png"
                 ) -> dict[str, str]:
    """Upload each ``(local file, name)`` to ``loc.key(name)`` unless an object with that key exists (names are
    content hashes: an existing object is the same image). Returns name -> ``s3://`` URI for every file."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = loc.client()
    files = list(files)
    have = existing_keys(loc, client)
    uris = {}
    for path, name in files:
        key = loc.key(name)
        if key not in have:
            try:
                client.put_object(Bucket=loc.bucket, Key=key, Body=Path(path).read_bytes(), ContentType=content_type)
            except (BotoCoreError, ClientError) as exc:
                raise _error(exc, loc, f"upload of {name}") from None
            have.add(key)
        uris[name] = loc.uri(name)
    return uris
