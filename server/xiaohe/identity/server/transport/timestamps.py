"""Epoch seconds <-> google.protobuf.Timestamp."""

from __future__ import annotations

from google.protobuf import timestamp_pb2


def timestamp(epoch_seconds: float) -> timestamp_pb2.Timestamp:
    """A Timestamp for epoch seconds."""
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(epoch_seconds * 1e9))
    return ts
