"""The SMS and number-status SDKs' own request logs never reach ours (C4, I1, X2)."""

from __future__ import annotations

import logging

import pytest

from xiaohe.identity.server.delivery.sdk_logging import (
    ALIYUN_LOGGERS,
    TENCENT_LOGGER,
    URLLIB3_LOGGER,
    quiet_sdk_loggers,
)

REQUEST = "GET /?PhoneNumbers=13812345678&TemplateParam=%7B%22code%22%3A%22604219%22%7D"


def test_the_sdks_request_lines_are_dropped_at_their_source(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import darabonba.core  # noqa: F401 - attaches its own console handler at DEBUG

    quiet_sdk_loggers()
    with caplog.at_level(logging.DEBUG):
        for name in (*ALIYUN_LOGGERS, TENCENT_LOGGER, URLLIB3_LOGGER):
            logging.getLogger(name).debug(REQUEST)
    assert "13812345678" not in caplog.text
    for name in ALIYUN_LOGGERS:
        sdk = logging.getLogger(name)
        assert sdk.handlers == []
        assert not sdk.propagate
    logging.getLogger(URLLIB3_LOGGER).warning("connection pool is full")
    assert "connection pool is full" in caplog.text  # warnings still come through
