"""F3: undecodable, truncated and oversized requests, sent as raw bytes to every RPC.

Every method of every service in `app.SERVICE_NAMES` is called by its full name
with bytes (no serializers), so the server sees exactly what a hostile caller
sends. Bytes the method's request type cannot parse must answer INVALID_ARGUMENT
with ErrorInfo and a field violation; bytes that parse may answer anything but
UNKNOWN or INTERNAL. Nothing is logged at WARNING or above, by us or by grpc.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import Harness
from tests.rpc_errors import details_of
from xiaohe.identity.server.app import SERVICE_NAMES
from xiaohe.identity.server.callers.grants import METHOD_GRANTS
from xiaohe.identity.v1 import codes_pb2, common_pb2

DOMAIN = "identity.xiaohe"
ISSUE_CODE = "/xiaohe.identity.v1.CodeService/IssueCode"
LOGIN = "/xiaohe.identity.v1.AuthService/Login"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
# What grpc's own answer leaked: the exception, its class, the parser's words, the type name.
LEAKS = ("DecodeError", "Unexpected", "class", "protobuf", "parsing", "Wire format", "Request")
NEVER = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
CORE_COMPLAINT = re.compile(r"[WEF]\d{4} ")
Metadata = tuple[tuple[str, str], ...]
# No serializers: the bytes go out as they are, and come back as bytes.
RAW: dict[str, None] = {"request_serializer": None, "response_deserializer": None}


@dataclass(frozen=True)
class Rpc:
    """One method: its full name, its request class and a request with every field set."""

    method: str
    request_class: type[Message]
    full: bytes

    @property
    def name(self) -> str:
        """The method name alone, as the metrics label it."""
        return self.method.rsplit("/", 1)[-1]

    def parses(self, body: bytes) -> bool:
        """Whether the request class itself accepts these bytes."""
        try:
            self.request_class.FromString(body)
        except DecodeError:
            return False
        return True


def _sample(field: FieldDescriptor) -> object:
    """A value for a scalar field that takes several bytes on the wire."""
    if field.type == FieldDescriptor.TYPE_STRING:
        return "张三+8613800138000"
    if field.type == FieldDescriptor.TYPE_BYTES:
        return b"\x00\xff" * 4
    if field.type == FieldDescriptor.TYPE_BOOL:
        return True
    if field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return field.enum_type.values[-1].number
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 1.5
    return 300


def _filled(descriptor: Descriptor, depth: int = 0) -> Message:
    """A message of this type with every field set (the last member of each oneof wins)."""
    message = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        value = getattr(message, field.name)
        if field.message_type is not None:
            if depth > 3 or field.message_type.GetOptions().map_entry:
                continue
            sub = _filled(field.message_type, depth + 1)
            if field.is_repeated:
                value.add().CopyFrom(sub)
            else:
                value.CopyFrom(sub)
        elif field.is_repeated:
            value.append(_sample(field))
        else:
            setattr(message, field.name, _sample(field))
    return message


def _rpcs() -> list[Rpc]:
    """Every method of every served service, with its request class from the descriptor."""
    pool = descriptor_pool.Default()
    out: list[Rpc] = []
    for service_name in SERVICE_NAMES:
        service = pool.FindServiceByName(service_name)
        for m in service.methods:
            request_class = message_factory.GetMessageClass(m.input_type)
            full = _filled(m.input_type).SerializeToString()
            out.append(Rpc(f"/{service.full_name}/{m.name}", request_class, full))
            if m.server_streaming:
                SERVER_STREAMING.add(out[-1].method)
    return out


SERVER_STREAMING: set[str] = set()
"""Methods that answer with a stream: a call reads the first message (or the error)."""
RPCS = _rpcs()


def _bodies(rpc: Rpc) -> st.SearchStrategy[bytes]:
    """Random bytes, proper prefixes of a full request, and a full request with one byte changed."""
    last = max(0, len(rpc.full) - 1)
    cuts = st.integers(min_value=0, max_value=last)

    def changed(at: int, byte: int) -> bytes:
        return rpc.full[:at] + bytes([byte]) + rpc.full[at + 1 :]

    return st.one_of(
        st.binary(max_size=64),
        cuts.map(lambda k: rpc.full[:k]),
        st.builds(changed, cuts, st.integers(min_value=0, max_value=255)),
    )


class _Collect(logging.Handler):
    """Keeps every record it is handed at WARNING and above."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the record."""
        self.records.append(record)


@dataclass
class LogWatch:
    """What was logged at WARNING and above, through Python logging or by grpc's C core."""

    records: list[logging.LogRecord]
    capfd: pytest.CaptureFixture[str]

    def complaints(self) -> list[str]:
        """Everything at WARNING and above since the last look (grpc core lines: `W1202 …`)."""
        out = [f"{r.name}: {r.getMessage()}" for r in self.records]
        self.records.clear()
        err = self.capfd.readouterr().err
        return out + [line for line in err.splitlines() if CORE_COMPLAINT.match(line)]


@pytest.fixture
def log_watch(capfd: pytest.CaptureFixture[str]) -> Iterator[LogWatch]:
    """Watches the root logger, grpc's own logger and stderr for WARNING and above."""
    handler = _Collect()
    loggers = (logging.getLogger(), logging.getLogger("grpc"))
    for logger in loggers:
        logger.addHandler(handler)
    yield LogWatch(handler.records, capfd)
    for logger in loggers:
        logger.removeHandler(handler)


async def _call(
    h: Harness, method: str, body: bytes, metadata: Metadata | None = None
) -> grpc.aio.AioRpcError | None:
    """The error of one raw call, or None if it succeeded (a stream: its first message came)."""
    metadata = h.metadata if metadata is None else metadata
    try:
        if method in SERVER_STREAMING:
            stream = h.channel.unary_stream(method, **RAW)(body, metadata=metadata)
            try:
                await stream.read()
            finally:
                stream.cancel()
        else:
            await h.channel.unary_unary(method, **RAW)(body, metadata=metadata)
    except grpc.aio.AioRpcError as err:
        return err
    return None


def _error_info_domain(err: grpc.aio.AioRpcError) -> str:
    """The domain of the ErrorInfo in a failed call's status details, or ""."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.domain)
    return ""


def _assert_undecodable_answer(err: grpc.aio.AioRpcError | None) -> None:
    """INVALID_ARGUMENT with ErrorInfo, a request id and a violation on `request`; no leaks."""
    assert err is not None, "undecodable bytes were accepted"
    d = details_of(err)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT, (d.code, d.message)
    assert _error_info_domain(err) == DOMAIN
    assert d.reason == "INVALID_ARGUMENT"
    assert d.request_id
    assert set(d.violations) == {"request"}
    assert d.violations["request"]
    assert not [leak for leak in LEAKS if leak in d.message], d.message


def _undecodable_count(h: Harness, name: str) -> float:
    value = h.container.metrics.registry.get_sample_value(
        "xiaohe_undecodable_requests_total", {"method": name}
    )
    return 0.0 if value is None else value


def _rpc_count(h: Harness, name: str) -> float:
    registry = h.container.metrics.registry
    return sum(
        sample.value
        for metric in registry.collect()
        if metric.name == "xiaohe_rpc_requests"
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("method") == name
    )


def _with_destination(raw: bytes) -> bytes:
    """An IssueCodeRequest whose string field `destination` holds exactly these bytes."""
    number = codes_pb2.IssueCodeRequest.DESCRIPTOR.fields_by_name["destination"].number
    return bytes([number << 3 | 2, len(raw)]) + raw


@pytest.mark.parametrize(
    "body",
    [_with_destination(b"\xff\xfe138"), b"\xff\xff\xff\xff"],
    ids=["string-field-bad-utf8", "corrupt-wire-format"],
)
async def test_the_reported_bodies_answer_invalid_argument_quietly(
    h: Harness, log_watch: LogWatch, caplog: pytest.LogCaptureFixture, body: bytes
) -> None:
    """F3: the finding's two IssueCode bodies get INVALID_ARGUMENT, one DEBUG line and a count."""
    with pytest.raises(DecodeError):
        codes_pb2.IssueCodeRequest.FromString(body)
    with caplog.at_level(logging.DEBUG, logger="xiaohe.identity.rpc"):
        err = await _call(h, ISSUE_CODE, body)
    _assert_undecodable_answer(err)
    ours = [r for r in caplog.records if r.name == "xiaohe.identity.rpc"]
    assert [r.levelno for r in ours] == [logging.DEBUG]
    assert _undecodable_count(h, "IssueCode") == 1
    assert log_watch.complaints() == []
    await h.drain_outbox()
    assert h.outbox_lines() == []


@pytest.mark.parametrize("rpc", RPCS, ids=[r.method.rsplit(".", 1)[-1] for r in RPCS])
@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
async def test_random_and_truncated_bytes_never_answer_unknown_or_internal(
    h: Harness, log_watch: LogWatch, rpc: Rpc, data: st.DataObject
) -> None:
    """F3: unparsable bytes get INVALID_ARGUMENT (counted); parsable ones never UNKNOWN/INTERNAL."""
    body = data.draw(_bodies(rpc), label="body")
    before = _undecodable_count(h, rpc.name)
    err = await _call(h, rpc.method, body)
    if rpc.parses(body):
        assert err is None or err.code() not in NEVER, (err.code(), err.details())
        assert _undecodable_count(h, rpc.name) == before
    else:
        _assert_undecodable_answer(err)
        assert _undecodable_count(h, rpc.name) == before + 1
    assert log_watch.complaints() == []


async def test_garbage_without_credentials_is_unauthenticated_and_never_parsed(
    h: Harness, log_watch: LogWatch
) -> None:
    """F3: strangers get UNAUTHENTICATED for garbage to any method; the parser never runs."""
    assert {rpc.method for rpc in RPCS} == set(METHOD_GRANTS)  # every served method is fuzzed
    for rpc in RPCS:
        err = await _call(h, rpc.method, b"\xff\xff\xff\xff", metadata=())
        assert err is not None, rpc.method
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, rpc.method
        assert _undecodable_count(h, rpc.name) == 0
    assert log_watch.complaints() == []


async def test_garbage_from_a_client_without_the_grant_is_permission_denied(
    h: Harness, log_watch: LogWatch
) -> None:
    """F3: the grant is checked before the bytes are parsed."""
    codes_only = await h.client_metadata("codes")
    err = await _call(h, LOGIN, b"\xff\xff\xff\xff", metadata=codes_only)
    assert err is not None
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _undecodable_count(h, "Login") == 0
    assert log_watch.complaints() == []


async def test_public_health_and_reflection_refuse_garbage_quietly(
    h: Harness, log_watch: LogWatch
) -> None:
    """F3: health and reflection need no credentials, so garbage to them is refused quietly too."""
    _assert_undecodable_answer(await _call(h, HEALTH_CHECK, b"\x0a\x02\xff\xfe", metadata=()))
    watch = h.channel.unary_stream(HEALTH_WATCH, **RAW)
    with pytest.raises(grpc.aio.AioRpcError) as watched:
        async for _ in watch(b"\xff\xff\xff\xff"):
            pass
    _assert_undecodable_answer(watched.value)

    async def garbage_then_more() -> AsyncIterator[bytes]:
        yield b"\xff\xff\xff\xff"
        yield reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()

    reflect = h.channel.stream_stream(REFLECTION, **RAW)
    with pytest.raises(grpc.aio.AioRpcError) as reflected:
        async for _ in reflect(garbage_then_more()):
            pass
    _assert_undecodable_answer(reflected.value)
    assert _undecodable_count(h, "Check") == 1
    assert _undecodable_count(h, "ServerReflectionInfo") == 1
    assert log_watch.complaints() == []

    # Well-formed requests are still answered by all three.
    check = h.channel.unary_unary(HEALTH_CHECK, **RAW)
    raw = await check(health_pb2.HealthCheckRequest(service="").SerializeToString())
    serving = health_pb2.HealthCheckResponse.FromString(raw).status
    assert serving == health_pb2.HealthCheckResponse.SERVING
    stream = watch(health_pb2.HealthCheckRequest(service="").SerializeToString())
    first = await stream.read()
    assert isinstance(first, bytes)
    assert health_pb2.HealthCheckResponse.FromString(first).status == serving
    stream.cancel()

    async def list_services() -> AsyncIterator[bytes]:
        yield reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()

    answers = [
        reflection_pb2.ServerReflectionResponse.FromString(r)
        async for r in reflect(list_services())
    ]
    assert set(SERVICE_NAMES) <= {s.name for s in answers[0].list_services_response.service}


async def test_a_message_over_max_message_bytes_never_reaches_the_servicer(
    h: Harness, log_watch: LogWatch
) -> None:
    """F3: grpc refuses a request over `max_message_bytes`; one of exactly that size is served."""
    limit = h.container.settings.max_message_bytes
    assert limit == 64 * 1024
    at_limit = codes_pb2.IssueCodeRequest(
        channel=common_pb2.CHANNEL_SMS, purpose=common_pb2.PURPOSE_REGISTER, destination="x" * limit
    )
    header = at_limit.ByteSize() - limit
    at_limit.destination = "x" * (limit - header)
    assert at_limit.ByteSize() == limit
    err = await _call(h, ISSUE_CODE, at_limit.SerializeToString())
    assert err is not None
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "destination" in details_of(err).violations
    assert _rpc_count(h, "IssueCode") == 1

    over = codes_pb2.IssueCodeRequest(destination="+8613800138000" + "0" * limit)
    err = await _call(h, ISSUE_CODE, over.SerializeToString())
    assert err is not None
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _rpc_count(h, "IssueCode") == 1  # the interceptor and servicer never saw it
    assert _undecodable_count(h, "IssueCode") == 0
    await h.drain_outbox()
    assert h.outbox_lines() == []
    assert log_watch.complaints() == []


UPLOAD_DOCUMENT = "/xiaohe.identity.v1.RealNameService/UploadDocument"


async def test_a_client_stream_with_garbage_is_refused_quietly(
    h: Harness, log_watch: LogWatch
) -> None:
    """F3: a client-streaming upload whose first message does not parse, or whose first
    message is a chunk instead of the header, answers INVALID_ARGUMENT, never INTERNAL."""
    from xiaohe.identity.v1 import realname_pb2

    upload = h.channel.stream_unary(UPLOAD_DOCUMENT, **RAW)

    async def garbage_first() -> AsyncIterator[bytes]:
        yield b"\xff\xff\xff\xff"
        yield realname_pb2.UploadDocumentRequest(chunk=b"\x89PNG").SerializeToString()

    with pytest.raises(grpc.aio.AioRpcError) as garbage:
        await upload(garbage_first(), metadata=h.metadata)
    _assert_undecodable_answer(garbage.value)

    async def chunk_first() -> AsyncIterator[bytes]:
        yield realname_pb2.UploadDocumentRequest(chunk=b"\x89PNG").SerializeToString()

    with pytest.raises(grpc.aio.AioRpcError) as headless:
        await upload(chunk_first(), metadata=h.metadata)
    d = details_of(headless.value)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "header" in d.violations

    async def nothing() -> AsyncIterator[bytes]:
        return
        yield b""

    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await upload(nothing(), metadata=h.metadata)
    assert details_of(empty.value).code == grpc.StatusCode.INVALID_ARGUMENT
    assert log_watch.complaints() == []
