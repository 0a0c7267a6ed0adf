"""The ``s3`` store: objects in one bucket of any S3-compatible service, through boto3.

Locations are ``s3://<bucket>/<prefix><key>``. A save streams the image in parts of
:data:`PART` bytes with a multipart upload, so at most about two parts are in memory whatever
the image's size; the object becomes visible only when the upload is completed, and any
failure aborts the upload so no parts are left behind. Objects smaller than one part go up in
a single PutObject. Both writes are conditional (``If-None-Match: *``), so an existing object
is never overwritten, even by a concurrent writer.

The secret key is handed to boto3 and kept nowhere else: it never appears in a message or a
log line.
"""

from __future__ import annotations

import logging
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from lamina.errors import BackendUnavailable, Conflict, InvalidRequest, LaminaError, NotFound
from lamina.stores.base import CHUNK, Capabilities, ImageStore, StoredObject

log = logging.getLogger(__name__)

#: Multipart part size. S3 wants at least 5 MiB for every part but the last.
PART = 8 * 1024 * 1024
#: S3 takes at most this many parts in one multipart upload: with :data:`PART`-sized parts,
#: the largest object the store can write is ``PART * MAX_PARTS`` (78.1 GiB).
MAX_PARTS = 10_000
KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_MISSING = {"NoSuchKey", "NotFound", "404"}
_DENIED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidSecurity",
    "AllAccessDisabled",
    "403",
}
_EXISTS = {"PreconditionFailed", "412", "ConditionalRequestConflict"}


class S3ImageStore(ImageStore):
    name = "s3"
    capabilities = Capabilities(writable=True, ranged=True)

    def __init__(
        self,
        endpoint_url: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        region: str = "us-east-1",
        prefix: str = "images/",
        addressing: str = "path",
        create_bucket: bool = True,
    ) -> None:
        import boto3
        from botocore.config import Config

        if addressing not in ("path", "virtual", "auto"):
            raise InvalidRequest(f"s3 addressing must be path, virtual or auto, not {addressing!r}")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.region = region
        self.prefix = prefix.lstrip("/")
        self.create_bucket = create_bucket
        self._bucket_ready = not create_bucket
        self._lock = threading.Lock()
        config = Config(
            s3={"addressing_style": addressing},
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=10,
            read_timeout=60,
            # Checksums only where the API requires them: the default since boto3 1.36 adds
            # CRC trailers (aws-chunked bodies) that several S3-compatible services refuse.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=config,
        )

    def __repr__(self) -> str:
        return f"S3ImageStore({self.endpoint_url!r}, bucket={self.bucket!r})"

    # -- locations -------------------------------------------------------------------------

    def location_of(self, key: str) -> str:
        if not KEY.match(key):
            raise InvalidRequest(f"bad object name {key!r}")
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def _key(self, location: str) -> str:
        """The object key of a location of this store (bucket and prefix checked)."""
        parsed = urllib.parse.urlsplit(location)
        if parsed.scheme != "s3":
            raise InvalidRequest(f"{location!r} is not a location of the s3 store")
        if parsed.netloc != self.bucket:
            raise InvalidRequest(f"{location!r} is outside the s3 store's bucket {self.bucket!r}")
        key = urllib.parse.unquote(parsed.path).lstrip("/")
        name = key[len(self.prefix) :]
        if not key.startswith(self.prefix) or not KEY.match(name) or parsed.query:
            raise InvalidRequest(f"{location!r} is outside the s3 store's prefix {self.prefix!r}")
        return key

    # -- the interface ---------------------------------------------------------------------

    def save(self, key: str, chunks: Iterable[bytes]) -> StoredObject:
        """Stream ``chunks`` into a new object ``key``. Raises ``Conflict`` if it exists."""
        location = self.location_of(key)
        object_key = self._key(location)
        self._ensure_bucket()
        if self._head(object_key, location) is not None:
            raise Conflict(f"the s3 store already holds {key!r}")
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        buffer = bytearray()
        size = 0
        try:
            for chunk in chunks:
                buffer += chunk
                size += len(chunk)
                # Strictly more than a part: the last part (or a single PutObject) may be a
                # whole part, never an empty one.
                while len(buffer) > PART:
                    if upload_id is None:
                        upload_id = self._start_upload(object_key, location)
                    with memoryview(buffer) as view:
                        body = bytes(view[:PART])
                    del buffer[:PART]
                    parts.append(self._upload_part(object_key, location, upload_id, parts, body))
                    del body
            if upload_id is None:
                with self._errors(location, conflict=key):
                    self._client.put_object(
                        Bucket=self.bucket, Key=object_key, Body=bytes(buffer), IfNoneMatch="*"
                    )
            else:
                parts.append(
                    self._upload_part(object_key, location, upload_id, parts, bytes(buffer))
                )
                buffer.clear()
                with self._errors(location, conflict=key):
                    self._client.complete_multipart_upload(
                        Bucket=self.bucket,
                        Key=object_key,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": parts},
                        IfNoneMatch="*",
                    )
        except BaseException:
            if upload_id is not None:
                self._abort(object_key, upload_id)
            raise
        return StoredObject(location, size)

    def open(self, location: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Stream the object from ``offset`` with a ranged GetObject. Raises ``NotFound``."""
        key = self._key(location)
        if offset < 0 or (length is not None and length < 0):
            raise InvalidRequest(f"bad range: offset {offset}, length {length}")
        if length == 0:
            self.size(location)  # a missing object is still an error
            return iter(())
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            request["Range"] = f"bytes={offset}-{end}"
        try:
            with self._errors(location):
                response = self._client.get_object(**request)
        except _RangeNotSatisfiable:
            return iter(())  # offset at or past the end: nothing to read, like a file
        return _Body(response["Body"], lambda: self._errors(location))

    def delete(self, location: str) -> None:
        """Remove the object; a missing one is not an error."""
        key = self._key(location)
        with self._errors(location, missing_ok=True):
            self._client.delete_object(Bucket=self.bucket, Key=key)

    def exists(self, location: str) -> bool:
        return self._head(self._key(location), location) is not None

    def size(self, location: str) -> int:
        head = self._head(self._key(location), location)
        if head is None:
            raise NotFound(f"image file {location} is missing from the s3 store")
        return int(head["ContentLength"])

    def room(self) -> int:
        """The largest object a multipart upload of :data:`PART`-sized parts can make (a
        bucket's free space is not something S3 tells)."""
        return PART * MAX_PARTS

    def close(self) -> None:
        self._client.close()

    # -- helpers ---------------------------------------------------------------------------

    def _head(self, key: str, location: str) -> dict[str, Any] | None:
        try:
            with self._errors(location):
                head: dict[str, Any] = self._client.head_object(Bucket=self.bucket, Key=key)
                return head
        except NotFound:
            return None

    def _ensure_bucket(self) -> None:
        """Create the bucket on first write when asked to (once per store)."""
        if self._bucket_ready:
            return
        with self._lock:
            if self._bucket_ready:
                return
            where = f"s3://{self.bucket}"
            try:
                with self._errors(where):
                    self._client.head_bucket(Bucket=self.bucket)
            except NotFound:
                request: dict[str, Any] = {"Bucket": self.bucket}
                if self.region != "us-east-1":
                    request["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
                try:
                    with self._errors(where, conflict=self.bucket):
                        self._client.create_bucket(**request)
                except Conflict:
                    pass  # BucketAlreadyOwnedByYou: someone made it meanwhile
                log.info("created bucket %s at %s", self.bucket, self.endpoint_url)
            self._bucket_ready = True

    def discard_partial(self, key: str) -> None:
        """Abort the multipart uploads a crashed write of ``key`` left open."""
        location = self.location_of(key)
        object_key = self._key(location)
        with self._errors(location):
            try:
                listed = self._client.list_multipart_uploads(Bucket=self.bucket, Prefix=object_key)
            except self._client.exceptions.NoSuchBucket:
                return
        for upload in listed.get("Uploads", []):
            if upload["Key"] == object_key:
                self._abort(object_key, upload["UploadId"])

    def _start_upload(self, key: str, location: str) -> str:
        with self._errors(location):
            response = self._client.create_multipart_upload(Bucket=self.bucket, Key=key)
        return str(response["UploadId"])

    def _upload_part(
        self, key: str, location: str, upload_id: str, parts: list[dict[str, Any]], body: bytes
    ) -> dict[str, Any]:
        number = len(parts) + 1
        with self._errors(location):
            response = self._client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
            )
        return {"PartNumber": number, "ETag": response["ETag"]}

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:  # noqa: BLE001 - the original failure matters more
            log.warning(
                "could not abort multipart upload %s of %s in bucket %s: %s",
                upload_id,
                key,
                self.bucket,
                exc,
            )

    @contextmanager
    def _errors(
        self, location: str, *, missing_ok: bool = False, conflict: str | None = None
    ) -> Iterator[None]:
        """Turn botocore's exceptions into Lamina's."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            if missing_ok and (code in _MISSING or status == 404):
                return
            self._raise(location, code, status, str(error.get("Message") or code), conflict)
        except BotoCoreError as exc:
            raise BackendUnavailable(
                f"cannot reach the s3 store at {self.endpoint_url}: {exc}"
            ) from None

    def _raise(
        self, location: str, code: str, status: int, message: str, conflict: str | None
    ) -> NoReturn:
        if code == "NoSuchBucket":
            raise BackendUnavailable(
                f"the s3 store's bucket {self.bucket!r} does not exist at {self.endpoint_url}"
            )
        if code in _MISSING or status == 404:
            raise NotFound(f"image file {location} is missing from the s3 store")
        if code in _DENIED or status == 403:
            raise BackendUnavailable(
                f"the s3 store at {self.endpoint_url} denied access to bucket {self.bucket!r} "
                f"({code or status}): check its access key, secret key and permissions"
            )
        if code == "InvalidRange" or status == 416:
            raise _RangeNotSatisfiable(message)
        if conflict is not None and (
            code in _EXISTS or code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")
        ):
            if code == "BucketAlreadyExists":
                raise BackendUnavailable(
                    f"bucket {self.bucket!r} at {self.endpoint_url} belongs to someone else"
                )
            raise Conflict(f"the s3 store already holds {conflict!r}")
        raise BackendUnavailable(
            f"the s3 store at {self.endpoint_url} failed on {location} "
            f"({code or status}): {message}"
        )


class _RangeNotSatisfiable(LaminaError):
    """Internal: the range starts at or after the end of the object."""


class _Body(Iterator[bytes]):
    """A GetObject body read in CHUNK pieces; ``close()`` returns the connection even if the
    caller stops early (a generator's ``finally`` would not run if it never started)."""

    def __init__(self, body: Any, errors: Callable[[], Any]) -> None:
        self._body = body
        self._errors = errors

    def __next__(self) -> bytes:
        with self._errors():
            data: bytes = self._body.read(CHUNK)
        if not data:
            self.close()
            raise StopIteration
        return data

    def close(self) -> None:
        self._body.close()

    def __del__(self) -> None:
        self._body.close()
