"""Server reflection under both names tools ask for: grpc.reflection.v1 and v1alpha.

grpcio-reflection (1.85) implements only `grpc.reflection.v1alpha`, which gRPC has
deprecated; current tools (grpcurl, buf curl, Postman) ask `grpc.reflection.v1`
first. The two protocols are the same file under another package name: the same
messages with the same field numbers, so the same bytes on the wire. One reflection
servicer therefore answers both: v1 requests are parsed with the v1alpha classes and
the answers serialised with them.

So that a tool can also describe the v1 service itself, its file descriptor
(`grpc/reflection/v1/reflection.proto`, derived from v1alpha's by renaming the
package) is added to protobuf's default pool, where every generated module adds
its own. If a later grpcio-reflection (or anything else) already put the real v1
file there, that one is kept.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
V1ALPHA_SERVICE_NAME = reflection.SERVICE_NAME
_V1_FILE = "grpc/reflection/v1/reflection.proto"
_V1ALPHA_PACKAGE = reflection_pb2.DESCRIPTOR.package
_V1_PACKAGE = "grpc.reflection.v1"
_METHOD = "ServerReflectionInfo"


def _v1_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """v1alpha's reflection.proto with the package, type references and options of v1."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = _V1_FILE
    proto.package = _V1_PACKAGE
    old, new = f".{_V1ALPHA_PACKAGE}.", f".{_V1_PACKAGE}."
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name[len(old) :]
    for service in proto.service:
        for method in service.method:
            method.input_type = new + method.input_type[len(old) :]
            method.output_type = new + method.output_type[len(old) :]
    proto.options.Clear()  # v1alpha's file is marked deprecated; v1 is not
    proto.options.java_multiple_files = True
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_outer_classname = "ServerReflectionProto"
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    return proto


def _ensure_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """Add the v1 reflection file to `pool` unless it already describes the v1 service."""
    try:
        pool.FindServiceByName(V1_SERVICE_NAME)
    except KeyError:
        pool.AddSerializedFile(_v1_file_descriptor().SerializeToString())


def enable_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection for `service_names` (and itself) as grpc.reflection.v1 and v1alpha."""
    pool = descriptor_pool.Default()
    _ensure_v1_descriptor(pool)
    names = (*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer(names, pool=pool)  # type: ignore[attr-defined]
    for service in (V1ALPHA_SERVICE_NAME, V1_SERVICE_NAME):
        handler = grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {_METHOD: handler}),)
        )


__all__ = ["V1ALPHA_SERVICE_NAME", "V1_SERVICE_NAME", "enable_reflection"]
