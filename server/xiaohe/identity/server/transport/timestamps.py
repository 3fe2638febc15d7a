"""Epoch seconds <-> google.protobuf.Timestamp."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from xiaohe.identity.server.clock import is_plausible_time


def timestamp(epoch_seconds: float) -> timestamp_pb2.Timestamp:
    """A Timestamp for epoch seconds."""
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(epoch_seconds * 1e9))
    return ts


def epoch_seconds(ts: timestamp_pb2.Timestamp) -> float | None:
    """Epoch seconds of a request's Timestamp, or None if it is not a time from 1970 to 2100.

    `ToNanoseconds` itself accepts years 1 to 9999, and nanos out of range raise
    ValueError: a caller's bad timestamp must become InvalidArgument, never INTERNAL.
    """
    if not 0 <= ts.nanos < 1_000_000_000:
        return None
    seconds = ts.seconds + ts.nanos / 1e9
    return seconds if is_plausible_time(seconds) else None
