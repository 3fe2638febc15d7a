"""Keep the SMS platform SDKs' request logs out of our logs (SECURITY C4, I1, X2).

Two libraries under the SDKs log whole requests at DEBUG level:
`urllib3.connectionpool` logs each request line, and Aliyun's SendSms carries
the phone number and the template values (the code) in the query string;
the Tencent Cloud SDK logs each request and answer body through
`tencentcloud_sdk_common`. Our redaction filter is a safety net and does not
recognise URL-encoded codes, so these records are dropped at their source,
however the root logger is configured: a filter on `urllib3.connectionpool`
drops its DEBUG records (connection and request lines; warnings stay), and the
Tencent logger is capped at WARNING and does not propagate. Aliyun's SDK core
(`darabonba-core`, and `alibabacloud-tea` under the number-status SDK) sets its
logger to DEBUG with a console handler of its own and, with `DEBUG=sdk` in the
environment, logs each request's path and query: those loggers lose their handlers,
are capped at WARNING and do not propagate either.
"""

from __future__ import annotations

import logging
from typing import Final

URLLIB3_LOGGER: Final = "urllib3.connectionpool"
TENCENT_LOGGER: Final = "tencentcloud_sdk_common"
ALIYUN_LOGGERS: Final = ("darabonba-core", "alibabacloud-tea")


class _DropDebug(logging.Filter):
    """Drops records below INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.INFO


def quiet_sdk_loggers() -> None:
    """Install the filters (idempotent; providers call it when they are built)."""
    pool = logging.getLogger(URLLIB3_LOGGER)
    if not any(isinstance(f, _DropDebug) for f in pool.filters):
        pool.addFilter(_DropDebug())
    for name in (TENCENT_LOGGER, *ALIYUN_LOGGERS):
        sdk = logging.getLogger(name)
        for handler in list(sdk.handlers):
            sdk.removeHandler(handler)
        sdk.setLevel(logging.WARNING)
        sdk.propagate = False


__all__ = ["ALIYUN_LOGGERS", "TENCENT_LOGGER", "URLLIB3_LOGGER", "quiet_sdk_loggers"]
