"""Read verification codes from the dev SMS outbox (`<data dir>/outbox/sms.jsonl`).

The server's file provider appends one JSON line per message. The reader tails the
file from where it stood when the reader was made, keeps the newest code per
(number, purpose) with a sequence number, and lets a caller wait for a code newer
than the one it saw before its IssueCode. Codes stay in memory only.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

_CODE = re.compile(r"\b(\d{6})\b")


class OutboxReader:
    """Tails one outbox file; safe to share between threads (and greenlets)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._offset = path.stat().st_size if path.exists() else 0
        self._partial = b""
        self._sequence = 0
        self._codes: dict[tuple[str, str], tuple[int, str]] = {}

    def mark(self) -> int:
        """Read what is there now; the sequence number to pass to `wait_code` afterwards."""
        self.poll()
        with self._lock:
            return self._sequence

    def poll(self) -> None:
        """Read the lines appended since the last poll."""
        with self._lock:
            if not self._path.exists():
                return
            with open(self._path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
            self._offset += len(data)
            lines = (self._partial + data).split(b"\n")
            self._partial = lines.pop()
            for raw in lines:
                self._take(raw)

    def _take(self, raw: bytes) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            return
        found = _CODE.search(str(message.get("text", "")))
        if found is None:
            return
        self._sequence += 1
        key = (str(message.get("to", "")), str(message.get("purpose", "")))
        self._codes[key] = (self._sequence, found.group(1))

    def wait_code(self, phone: str, purpose: str, after: int, timeout: float) -> str | None:
        """The newest code for (`phone`, `purpose`) read after sequence `after`, or None."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            with self._lock:
                seen = self._codes.get((phone, purpose))
                if seen is not None and seen[0] > after:
                    del self._codes[(phone, purpose)]
                    return seen[1]
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)
