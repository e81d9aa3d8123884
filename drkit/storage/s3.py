"""S3 and S3-compatible object stores (AWS, MinIO, Ceph RGW, Wasabi, B2's S3 API).

``repository.url: s3://BUCKET/PREFIX`` with options under ``repository.s3`` (see
:class:`S3Options`). Promises, on top of :class:`~drkit.storage.base.Storage`'s:

- ``put`` is atomic: S3 makes an object visible only when its upload completes; objects
  larger than ``multipart_threshold_mib`` go up as a multipart upload whose parts are sent
  concurrently and which is aborted on failure (no object appears).
- Every upload carries a checksum the server verifies (``Content-MD5`` by default, which
  every S3-compatible store understands, or a flexible checksum: crc32, crc32c, sha1,
  sha256), and the object's MD5 in metadata (``x-amz-meta-drkit-md5``); a full ``get``
  compares length and that MD5, a range ``get`` compares length. An MD5 mismatch is
  read once more: the same wrong bytes again is damage on the store
  (:class:`~drkit.errors.IntegrityError`, exit 6, never retried: verify names the
  object and its snapshots); different bytes were altered in transit
  (:class:`~drkit.errors.TransientStorageError`, retried). A short read is transient.
- ``501 NotImplemented`` is a capability answer (a permanent error naming the call),
  not an outage. A multipart upload that fails and cannot be aborted is reported
  (a warning naming the upload; ``drkit prune`` aborts stale uploads).
- Only objects under ``data/`` (packs) get ``storage_class``; index, snapshots, keys and
  locks stay in STANDARD, where they are read often.
- ``put``/``get``/``stat``/``list`` need no delete permission, so a backup can run with
  credentials that cannot destroy history.
- With ``object_lock`` (S3 Object Lock), every object except lock files (``locks/``, which
  the backup host must be able to remove when its run ends) is written with
  ``ObjectLockMode`` and ``ObjectLockRetainUntilDate = now + days``, on a single PUT and on
  CreateMultipartUpload alike; after a multipart upload the retention is read back and set
  with PutObjectRetention if the store did not apply it. Before the first write the bucket's
  Object Lock configuration is checked (a bucket without it is a clear error). The backend
  is :class:`~drkit.storage.base.RetentionAware`: ``retained_until`` reads HeadObject's
  lock fields, ``extend_retention`` calls PutObjectRetention. ``delete`` on such a bucket
  (always versioned) adds a delete marker: the object disappears from the repository and a
  version still under retention stays in the bucket until it expires (a lifecycle rule
  removes noncurrent versions; see docs/storage.md).
- Errors: a missing bucket or rejected credentials are one-line :class:`StorageError` s
  with a hint, a missing key is :class:`ObjectNotFound`, throttling/5xx/connection errors
  are transient. botocore's own retries run in ``adaptive`` mode under ours.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from drkit.errors import (
    ConfigError,
    IntegrityError,
    ObjectNotFound,
    StorageError,
    TransientStorageError,
)
from drkit.storage.base import ObjectInfo, Retention, validate_name

log = logging.getLogger("drkit.storage.s3")

MiB = 1024 * 1024
MD5_META = "drkit-md5"
UNLOCKED_PREFIX = "locks/"
"""Objects under this prefix get no retention: a lock must be deletable by the host that took it."""

_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
    "502",
    "504",
    "BadDigest",
    "XAmzContentSHA256Mismatch",
    "IncompleteBody",
    "OperationAborted",
}
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
}
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "403"}


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class ObjectLockOptions(BaseModel):
    """``repository.s3.object_lock``: retention set on every object drkit writes."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["GOVERNANCE", "COMPLIANCE"]
    """GOVERNANCE: users with s3:BypassGovernanceRetention can still delete early.
    COMPLIANCE: nobody (not even the account root) can delete before the date."""
    days: int = Field(ge=1, le=36500)
    """Retention of each object from when it is written (prune extends it for live data)."""

    @field_validator("mode", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


class _ViewBody(io.RawIOBase):
    """A request body read from a memoryview in place (a pack built in a reused buffer):
    botocore sizes it with seek/tell and sends it block by block, so no copy of the
    whole pack is made for the request."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = max(0, min(len(b), len(self._view) - self._pos))
        b[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


class S3Options(BaseModel):
    """``repository.s3``: every key optional; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid")

    endpoint_url: str | None = None
    """For S3-compatible stores, e.g. ``https://minio.lan:9000``; AWS when unset."""
    region: str | None = None
    profile: str | None = None
    """A profile of the shared AWS config/credentials files."""
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    storage_class: str | None = None
    """For packs (``data/``) only, e.g. STANDARD_IA, GLACIER_IR, INTELLIGENT_TIERING."""
    sse: Literal["AES256", "aws:kms"] | None = None
    sse_kms_key_id: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    checksum: Literal["md5", "crc32", "crc32c", "sha1", "sha256"] = "md5"
    multipart_threshold_mib: int = Field(32, ge=5, le=5 * 1024)
    multipart_chunk_mib: int = Field(8, ge=5, le=5 * 1024)
    """Part size (S3's minimum is 5 MiB except for the last part)."""
    concurrency: int = Field(4, ge=1, le=64)
    """Parts of one multipart upload sent at the same time."""
    max_attempts: int = Field(5, ge=1, le=20)
    """botocore's own attempts per request, the first included (adaptive mode)."""
    connect_timeout: float = Field(10, gt=0)
    read_timeout: float = Field(60, gt=0)
    verify_tls: bool | str = True
    """False, or a CA bundle path for a private CA."""
    object_lock: ObjectLockOptions | None = None
    """S3 Object Lock retention for every object but lock files (the bucket must have
    Object Lock enabled)."""


def parse_options(raw: dict[str, Any] | None) -> S3Options:
    """Validate ``repository.s3``; raises ConfigError naming ``repository.s3.KEY``."""
    try:
        opts = S3Options.model_validate(raw or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigError(err["msg"], key=f"repository.s3.{key}" if key else "repository.s3") from None
    if (opts.access_key_id is None) != (opts.secret_access_key is None):
        raise ConfigError(
            "set both access_key_id and secret_access_key, or neither",
            key="repository.s3",
            hint="without them the standard AWS credential chain is used (env, shared files, instance role)",
        )
    if opts.sse_kms_key_id and opts.sse != "aws:kms":
        raise ConfigError("sse_kms_key_id needs sse: aws:kms", key="repository.s3.sse_kms_key_id")
    return opts


def parse_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` -> (bucket, prefix without slashes); raises ConfigError."""
    parsed = urlparse(url)
    if parsed.scheme.lower() != "s3" or not parsed.netloc:
        raise ConfigError(f"not an S3 URL: {url!r}", key="repository.url", hint="use s3://BUCKET/PREFIX")
    if "@" in parsed.netloc or parsed.query or parsed.fragment:
        raise ConfigError(
            "an S3 URL holds only a bucket and a prefix",
            key="repository.url",
            hint="put credentials and the endpoint under repository.s3, never in the URL",
        )
    prefix = parsed.path.strip("/")
    if prefix and any(p in ("", ".", "..") for p in prefix.split("/")):
        raise ConfigError(f"bad prefix {prefix!r} in {url!r}", key="repository.url")
    return parsed.netloc, prefix


class S3Storage:
    """Objects under ``PREFIX/`` in one bucket. Thread-safe (one shared boto3 client)."""

    def __init__(self, url: str, options: S3Options | dict[str, Any] | None = None) -> None:
        self.bucket, self.prefix = parse_url(url)
        self.options = options if isinstance(options, S3Options) else parse_options(options)
        self.url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.endpoint = self.options.endpoint_url or "AWS S3"
        self._client = self._make_client()
        self._bucket_checked = False
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.unaborted_uploads: list[tuple[str, str]] = []
        """(name, upload id) of failed multipart uploads whose abort failed too."""
        self._object_lock_checked = False
        self.clock: Callable[[], datetime.datetime] = utc_now
        """Source of "now" for retention dates (tests move it)."""

    # -- setup ----------------------------------------------------------------------------

    def _make_client(self) -> Any:
        import boto3
        import botocore.config
        from botocore.exceptions import BotoCoreError, ProfileNotFound

        o = self.options
        try:
            session = boto3.session.Session(profile_name=o.profile) if o.profile else boto3.session.Session()
        except ProfileNotFound:
            raise ConfigError(f"AWS profile {o.profile!r} not found", key="repository.s3.profile") from None
        config_kwargs: dict[str, Any] = {
            # total_max_attempts counts the first try ("max_attempts" would count retries only).
            "retries": {"mode": "adaptive", "total_max_attempts": o.max_attempts},
            "connect_timeout": o.connect_timeout,
            "read_timeout": o.read_timeout,
            "s3": {"addressing_style": o.addressing_style},
            "max_pool_connections": max(10, o.concurrency * 2 + 4),
        }
        if o.checksum == "md5":
            # Content-MD5 only: S3-compatible stores that predate flexible checksums reject
            # the CRC32 that recent botocore adds by default.
            config_kwargs["request_checksum_calculation"] = "when_required"
            config_kwargs["response_checksum_validation"] = "when_required"
        try:
            return session.client(
                "s3",
                endpoint_url=o.endpoint_url,
                region_name=o.region or session.region_name or "us-east-1",
                aws_access_key_id=o.access_key_id,
                aws_secret_access_key=o.secret_access_key.get_secret_value() if o.secret_access_key else None,
                aws_session_token=o.session_token.get_secret_value() if o.session_token else None,
                verify=o.verify_tls,
                config=botocore.config.Config(**config_kwargs),
            )
        except (ValueError, BotoCoreError) as exc:
            raise ConfigError(f"cannot set up the S3 client: {exc}", key="repository.s3") from None

    def _key(self, name: str) -> str:
        validate_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _name(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def _put_args(self, name: str) -> dict[str, Any]:
        o = self.options
        args: dict[str, Any] = {}
        if o.storage_class and name.startswith("data/"):
            args["StorageClass"] = o.storage_class
        if o.sse:
            args["ServerSideEncryption"] = o.sse
            if o.sse_kms_key_id:
                args["SSEKMSKeyId"] = o.sse_kms_key_id
        return args

    def _lock_args(self, name: str) -> dict[str, Any]:
        """ObjectLockMode/RetainUntilDate for *name* (none for lock files or without object_lock)."""
        lock = self.options.object_lock
        if lock is None or name.startswith(UNLOCKED_PREFIX):
            return {}
        return {
            "ObjectLockMode": lock.mode,
            "ObjectLockRetainUntilDate": self.clock() + datetime.timedelta(days=lock.days),
        }

    def _checksum_args(self, data: bytes | memoryview) -> dict[str, Any]:
        if self.options.checksum == "md5":
            return {"ContentMD5": base64.b64encode(hashlib.md5(data).digest()).decode()}
        return {"ChecksumAlgorithm": self.options.checksum.upper()}

    # -- errors ---------------------------------------------------------------------------

    def _error(self, exc: Exception, op: str, name: str) -> StorageError:
        """Map a botocore exception to a drkit error (never containing secrets)."""
        from botocore.exceptions import (
            ClientError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )
        from botocore.exceptions import ConnectionError as BotoConnectionError

        where = f"{op} {name} on {self.endpoint}"
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return StorageError(
                    f"bucket {self.bucket!r} does not exist on {self.endpoint}",
                    hint=f"create it first (e.g. 'aws s3 mb s3://{self.bucket}') or fix repository.url / repository.s3.endpoint_url",
                )
            if code in ("NoSuchKey", "404", "NotFound"):
                return ObjectNotFound(name=name)
            if code in _CREDENTIAL_CODES:
                return StorageError(
                    f"credentials rejected by {self.endpoint} ({code}) on {op} {name}",
                    hint="check repository.s3.access_key_id/secret_access_key or the AWS profile/env credentials, and the region",
                )
            if code in _DENIED_CODES:
                return StorageError(
                    f"credentials rejected: access denied ({code}) to {op} {name} in bucket {self.bucket!r}",
                    hint=f"grant these credentials s3 permission for {op} on arn:aws:s3:::{self.bucket}/{self.prefix}* "
                    "(backup needs get/put/list only; forget/prune/unlock also need delete)",
                )
            if code == "NotImplemented" or status == 501:
                # A capability answer, not an outage: the store does not offer this call.
                if op in ("check object lock of", "extend retention of", "head") or (
                    self.options.object_lock is not None and op == "put"
                ):
                    return self._no_object_lock_error()
                return StorageError(
                    f"{self.endpoint} does not implement {op} {name} ({code or status})",
                    hint="this S3-compatible store lacks a feature drkit needs for this; check its documentation "
                    "(or the options in repository.s3, e.g. checksum: md5, object_lock)",
                )
            if code in _TRANSIENT_CODES or (isinstance(status, int) and status >= 500):
                return TransientStorageError(f"{where}: {code or status} {err.get('Message', '')}".rstrip())
            if code == "InvalidBucketName":
                return StorageError(f"invalid bucket name {self.bucket!r}", hint="fix repository.url")
            if code in ("InvalidRequest", "ObjectLockConfigurationNotFoundError") and "lock" in str(err.get("Message", "")).lower():
                return self._no_object_lock_error()
            return StorageError(f"{where}: {code or status}: {err.get('Message', '')}".rstrip(": "))
        if isinstance(exc, NoCredentialsError):
            return StorageError(
                f"no S3 credentials found for {self.endpoint}",
                hint="set repository.s3.access_key_id/secret_access_key, a profile, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
            )
        if isinstance(exc, PartialCredentialsError):
            return StorageError(f"incomplete S3 credentials: {exc}", hint="check the AWS profile or environment")
        if isinstance(exc, (BotoConnectionError, HTTPClientError)):
            return TransientStorageError(
                f"cannot reach S3 endpoint {self.endpoint} ({type(exc).__name__}) during {op} {name}",
                hint="check repository.s3.endpoint_url, the network and the store's health",
            )
        return TransientStorageError(f"{where}: {type(exc).__name__}: {exc}")

    def _check_bucket(self, op: str, name: str) -> None:
        """After an ambiguous 404: raise the missing-bucket error if that is the cause."""
        if self._bucket_checked:
            return
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                exc.response["Error"]["Code"] = "NoSuchBucket"
            raise self._error(exc, op, name) from None
        except Exception as exc:
            raise self._error(exc, op, name) from None
        self._bucket_checked = True

    def _raise_if_missing(self, key: str, name: str) -> None:
        """After a 403 on GET/HEAD: raise :class:`ObjectNotFound` if *key* does not exist.

        AWS answers a GET or HEAD of a missing key with 403, not 404, unless the caller may
        ``s3:ListBucket`` the bucket for that request; a ListBucket grant conditioned on
        ``s3:prefix`` (as in config/iam/) does not count, because a GET or HEAD carries no
        prefix. A listing of exactly that key is allowed by such a grant and tells the two
        apart. Returns (the caller raises access denied) when the key exists or the listing is
        itself refused.
        """
        try:
            resp = self._client.list_objects_v2(Bucket=self.bucket, Prefix=key, MaxKeys=1)
        except Exception:
            return
        if not any(obj.get("Key") == key for obj in resp.get("Contents", [])):
            raise ObjectNotFound(name=name)

    def _no_object_lock_error(self) -> StorageError:
        return StorageError(
            f"bucket {self.bucket!r} on {self.endpoint} does not have S3 Object Lock enabled, "
            "but repository.s3.object_lock is set",
            hint=f"create the bucket with Object Lock ('aws s3api create-bucket --bucket {self.bucket} "
            "--object-lock-enabled-for-bucket'), or enable versioning and then Object Lock on it "
            "('aws s3api put-object-lock-configuration'); or remove repository.s3.object_lock",
        )

    def check_object_lock(self) -> None:
        """Raise a clear :class:`StorageError` if ``object_lock`` is set and the bucket has no
        Object Lock (GetObjectLockConfiguration). Checked once per instance, before the
        first write. Credentials without s3:GetBucketObjectLockConfiguration skip the check
        (the first locked PUT then fails with the same error)."""
        if self.options.object_lock is None or self._object_lock_checked:
            return
        from botocore.exceptions import ClientError

        try:
            resp = self._client.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "ObjectLockConfigurationNotFoundError":
                raise self._no_object_lock_error() from None
            if code in _DENIED_CODES:
                log.debug("cannot read the Object Lock configuration of %s (%s); not checked", self.bucket, code)
                self._object_lock_checked = True
                return
            raise self._error(exc, "check object lock of", "bucket") from None
        except Exception as exc:
            raise self._error(exc, "check object lock of", "bucket") from None
        if (resp.get("ObjectLockConfiguration") or {}).get("ObjectLockEnabled") != "Enabled":
            raise self._no_object_lock_error()
        self._object_lock_checked = True

    # -- retention (RetentionAware) -------------------------------------------------------

    @property
    def retention(self) -> Retention | None:
        lock = self.options.object_lock
        return Retention(lock.mode, lock.days) if lock else None

    def retained_until(self, name: str) -> datetime.datetime | None:
        """HeadObject's ObjectLockRetainUntilDate (timezone-aware), or None (no retention).
        moto and some S3-compatible stores lack GetObjectRetention; HeadObject has it."""
        key = self._key(name)
        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise self._error(exc, "head", name) from exc
        until: datetime.datetime | None = resp.get("ObjectLockRetainUntilDate")
        if until is None:
            return None
        if until.tzinfo is None:
            until = until.replace(tzinfo=datetime.timezone.utc)
        return until.astimezone(datetime.timezone.utc)

    def extend_retention(self, name: str, until: datetime.datetime) -> None:
        """PutObjectRetention(mode, *until*) on the current version of *name*. Needs
        s3:PutObjectRetention; never call it with a date earlier than the current one."""
        lock = self.options.object_lock
        if lock is None:
            raise StorageError(f"cannot extend the retention of {name}: repository.s3.object_lock is not set")
        key = self._key(name)
        try:
            self._client.put_object_retention(
                Bucket=self.bucket, Key=key, Retention={"Mode": lock.mode, "RetainUntilDate": until}
            )
        except Exception as exc:
            raise self._error(exc, "extend retention of", name) from exc

    # -- Storage --------------------------------------------------------------------------

    def put(self, name: str, data: bytes | memoryview) -> None:
        key = self._key(name)
        view = memoryview(data).cast("B")
        digest = hashlib.md5(view).digest()  # once: metadata (for downloads) and Content-MD5
        md5 = digest.hex()
        threshold = self.options.multipart_threshold_mib * MiB
        try:
            self.check_object_lock()
            if len(view) <= threshold:
                checksum = (
                    {"ContentMD5": base64.b64encode(digest).decode()}
                    if self.options.checksum == "md5"
                    else self._checksum_args(view)
                )
                self._client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=data if isinstance(data, bytes) else _ViewBody(view),  # no copy of a pack
                    Metadata={MD5_META: md5},
                    **self._put_args(name),
                    **self._lock_args(name),
                    **checksum,
                )
            else:
                self._put_multipart(name, key, view, md5)
        except StorageError:
            raise
        except Exception as exc:
            raise self._error(exc, "put", name) from exc

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.options.concurrency, thread_name_prefix="drkit-s3-part")
            return self._pool

    def _put_multipart(self, name: str, key: str, view: memoryview, md5: str) -> None:
        o = self.options
        part = o.multipart_chunk_mib * MiB
        create_args = dict(self._put_args(name))
        lock_args = self._lock_args(name)
        create_args.update(lock_args)
        if o.checksum != "md5":
            create_args["ChecksumAlgorithm"] = o.checksum.upper()
        upload = self._client.create_multipart_upload(
            Bucket=self.bucket, Key=key, Metadata={MD5_META: md5}, **create_args
        )
        upload_id = upload["UploadId"]

        def send(number: int, start: int) -> dict[str, Any]:
            chunk = view[start : start + part]
            resp = self._client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=bytes(chunk),
                **self._checksum_args(chunk),
            )
            done = {"PartNumber": number, "ETag": resp["ETag"]}
            if o.checksum != "md5":
                field = f"Checksum{o.checksum.upper()}"
                if field in resp:
                    done[field] = resp[field]
            return done

        try:
            futures = [
                self._executor().submit(send, i + 1, start) for i, start in enumerate(range(0, len(view), part))
            ]
            parts = [f.result() for f in futures]
            self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            try:  # no object becomes visible; this frees the parts (needs AbortMultipartUpload)
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception as abort_exc:
                self.unaborted_uploads.append((name, upload_id))
                log.warning(
                    "upload of %s failed and aborting it failed too (%s): its parts stay stored, invisible and billed "
                    "(upload id %s); 'drkit prune' aborts uploads older than an hour (needs s3:ListBucketMultipartUploads "
                    "and s3:AbortMultipartUpload)",
                    name,
                    self._error(abort_exc, "abort upload of", name).message,
                    upload_id,
                )
            raise
        if lock_args:
            # Some stores (moto, older S3-compatible servers) ignore the lock headers of
            # CreateMultipartUpload: read the retention back and set it if missing.
            want = lock_args["ObjectLockRetainUntilDate"]
            got = self.retained_until(name)
            if got is None or got < want - datetime.timedelta(seconds=1):
                log.debug("store did not apply the retention of multipart upload %s; setting it", name)
                self.extend_retention(name, want)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        key = self._key(name)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        if length == 0:
            self.stat(name)
            return b""
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        ranged = offset > 0 or length is not None
        if ranged:
            args["Range"] = f"bytes={offset}-" + (str(offset + length - 1) if length is not None else "")
        if self.options.checksum != "md5" and not ranged:
            args["ChecksumMode"] = "ENABLED"
        from botocore.exceptions import ClientError

        try:
            resp = self._client.get_object(**args)
            body: bytes = resp["Body"].read()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "InvalidRange":  # offset at or past the end: the object exists
                return b""
            if code in ("NoSuchKey", "404"):
                self._check_bucket("get", name)
            elif code in _DENIED_CODES:
                self._raise_if_missing(key, name)
            raise self._error(exc, "get", name) from exc
        except Exception as exc:
            raise self._error(exc, "get", name) from exc
        expected = resp.get("ContentLength")
        if expected is not None and len(body) != expected:
            raise TransientStorageError(
                f"short read of {name} from {self.endpoint}: {len(body)} of {expected} bytes"
            )
        if not ranged:
            want = (resp.get("Metadata") or {}).get(MD5_META)
            if want and hashlib.md5(body).hexdigest() != want:
                return self._reread(name, args, want, hashlib.md5(body).hexdigest())
        return body

    def _reread(self, name: str, args: dict[str, Any], want: str, first: str) -> bytes:
        """An MD5 mismatch: read once more. The same wrong bytes again means the stored
        object is damaged (IntegrityError: data, not an outage, never retried); other
        bytes mean the first read was altered in transit (good bytes are returned, or a
        transient error when they are wrong again)."""
        try:
            body: bytes = self._client.get_object(**args)["Body"].read()
        except Exception as exc:
            raise self._error(exc, "get", name) from exc
        got = hashlib.md5(body).hexdigest()
        if got == want:
            return body
        if got == first:
            raise IntegrityError(
                name=name,
                detail=f"stored bytes on {self.endpoint} do not match the MD5 recorded when they were written (read twice)",
            )
        raise TransientStorageError(f"checksum mismatch reading {name} from {self.endpoint}")

    def stat(self, name: str) -> ObjectInfo:
        key = self._key(name)
        from botocore.exceptions import ClientError

        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                self._check_bucket("stat", name)
            elif code in _DENIED_CODES:
                self._raise_if_missing(key, name)
            raise self._error(exc, "stat", name) from exc
        except Exception as exc:
            raise self._error(exc, "stat", name) from exc
        return ObjectInfo(name, int(resp["ContentLength"]))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under *prefix*/ (names that are not valid object names are skipped)."""
        base = self._key(prefix.rstrip("/")) + "/"
        items: list[ObjectInfo] = []
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                for obj in page.get("Contents", []):
                    name = self._name(obj["Key"])
                    try:
                        validate_name(name)
                    except Exception:
                        continue
                    items.append(ObjectInfo(name, int(obj["Size"]), obj.get("LastModified")))
        except Exception as exc:
            raise self._error(exc, "list", prefix) from exc
        return iter(items)

    def delete(self, name: str) -> None:
        """Idempotent. On an Object Lock bucket (versioned) this adds a delete marker: the
        object leaves the repository; a version under retention stays until it expires."""
        key = self._key(name)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            err = self._error(exc, "delete", name)
            if isinstance(err, ObjectNotFound):
                return
            raise err from exc

    def remove_stale_temporaries(self, min_age_seconds: float = 3600) -> int:
        """Abort multipart uploads under the prefix started more than *min_age_seconds* ago.

        Their parts are invisible but billed; younger uploads may be in progress and are
        kept. Returns how many were aborted. Needs s3:ListBucketMultipartUploads and
        s3:AbortMultipartUpload (not DeleteObject).
        """
        cutoff = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=min_age_seconds)
        prefix = f"{self.prefix}/" if self.prefix else ""
        aborted = 0
        try:
            pages = self._client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] <= cutoff:
                        self._client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                        aborted += 1
        except Exception as exc:
            raise self._error(exc, "clean", "multipart uploads") from exc
        return aborted

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        self._client.close()


def open_s3(url: str, options: dict[str, Any]) -> S3Storage:
    """Factory for :data:`drkit.storage.SCHEMES` (``options["s3"]`` is ``repository.s3``)."""
    return S3Storage(url, parse_options(options.get("s3")))


def _register() -> None:
    from drkit.storage import SCHEMES

    SCHEMES["s3"] = open_s3


_register()
