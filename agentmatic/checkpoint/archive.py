"""Archive checkpoints before retention deletes them: `S3Archive`.

`compact(..., archive=...)` hands each thread's doomed checkpoints to an
archive, a callable taking a list of rows, before deleting them. A row is a
dict: ``thread_id``, ``checkpoint_ns``, ``checkpoint_id``,
``parent_checkpoint_id``, and the checkpoint (with its values), its
metadata and its writes as the saver's serializer writes them (``type`` and
bytes pairs), readable with that serializer's ``loads_typed``.

`S3Archive` stores each row as one msgpack object under
``<prefix><thread>/<namespace>/<checkpoint id>.msgpack`` in a bucket of any
S3-compatible store. Archiving the same checkpoint again writes the same
object, so a retention run interrupted after archiving can simply be rerun.
"""

from __future__ import annotations

import datetime as dt
import decimal
import urllib.parse
import uuid
from typing import Any

import ormsgpack


class S3Archive:
    """An archive target: one object per checkpoint in `bucket` under `prefix`.

    `client` is a boto3 S3 client; by default one is made with boto3's
    default credential chain, which honours ``AWS_ENDPOINT_URL``.
    """

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        if not bucket:
            raise ValueError("an S3 archive needs a bucket")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if client is None:
            import boto3

            client = boto3.client("s3")
        self.client = client

    def __repr__(self) -> str:
        return f"S3Archive(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def key(self, row: dict[str, Any]) -> str:
        """Return the object key of an archived row."""
        parts = (row["thread_id"], row.get("checkpoint_ns") or "", row["checkpoint_id"])
        # Dots escaped too: some S3-compatible stores refuse "." and ".." parts.
        thread, ns, cid = (
            urllib.parse.quote(str(p), safe="").replace(".", "%2E") or "%"
            for p in parts
        )
        return f"{self.prefix}{thread}/{ns}/{cid}.msgpack"

    def __call__(self, rows: list[dict[str, Any]]) -> None:
        """Store every row; raise (so nothing is deleted) if one cannot be."""
        for row in rows:
            body = ormsgpack.packb(
                row, default=_plain, option=ormsgpack.OPT_PASSTHROUGH_BIG_INT
            )
            self.client.put_object(Bucket=self.bucket, Key=self.key(row), Body=body)

    def read(self, thread_id: str, checkpoint_ns: str, checkpoint_id: str) -> Any:
        """Return an archived row as stored (times and ids as text)."""
        key = self.key(
            {
                "thread_id": thread_id,
                "checkpoint_ns": checkpoint_ns,
                "checkpoint_id": checkpoint_id,
            }
        )
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return ormsgpack.unpackb(body)


def _plain(value: Any) -> Any:
    """Return what msgpack cannot store as it can: times, ids, big ints as text."""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, decimal.Decimal)):
        return str(value)
    if isinstance(value, memoryview):
        return bytes(value)
    raise TypeError(f"cannot archive a value of type {type(value).__name__}")


__all__ = ["S3Archive"]
