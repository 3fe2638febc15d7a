"""`make profile-codes`: where the time of the code path goes (IssueCode + VerifyCode pairs).

Runs the `code issue+verify` measurement of `make bench` under pyinstrument (a
sampling profiler: it does not slow every call the way a tracing profiler does)
and prints the call tree of the event loop's thread, our code's frames shown and
library internals folded. The rate it prints is lower than `make bench`'s: the
sampler costs time too. Read the tree's shares, not its seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from pyinstrument import Profiler

from benchmarks.__main__ import code_pairs
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis


def main(seconds: float, concurrency: int) -> None:
    """Profile code pairs for `seconds` and print the tree."""
    with tempfile.TemporaryDirectory(prefix="xiaohe-profile-") as tmp:
        root = Path(tmp)
        redis_server = EmbeddedRedis(root / "redis")
        redis_url = redis_server.start()
        try:
            profiler = Profiler(interval=0.0005, async_mode="disabled")
            profiler.start()
            rate = asyncio.run(code_pairs(root / "codes", redis_url, concurrency, seconds))
            profiler.stop()
        finally:
            redis_server.stop()
    print(f"{rate.name}: {rate.per_second:.0f}/s under the profiler")
    print(profiler.output_text(unicode=True, color=False, show_all=False))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    main(args.seconds, args.concurrency)
