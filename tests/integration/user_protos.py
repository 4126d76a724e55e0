"""A user's Protobuf messages, as ``protoc --python_out`` would generate them from two files:

    // demo/common.proto
    syntax = "proto3"; package demo;
    enum Channel { WEB = 0; APP = 1; }

    // demo/payment.proto
    syntax = "proto3"; package demo;
    import "demo/common.proto"; import "google/protobuf/timestamp.proto";
    message Envelope { string trace = 1; }
    message Payment { string id = 1; string account = 2; int64 ts = 3; repeated double features = 4;
                      google.protobuf.Timestamp at = 5; demo.Channel channel = 6; }

and a second version of the payment file, whose ``Payment`` gains ``string note = 7`` (a
compatible change). Built from their descriptors here: protoc does not install on these machines.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, timestamp_pb2
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

F = descriptor_pb2.FieldDescriptorProto


def payment_messages() -> list[type[Message]]:
    """``demo.Payment`` of the first version of its file, then of the second."""
    return [_payment(with_note=False), _payment(with_note=True)]


def _payment(*, with_note: bool) -> type[Message]:
    common = descriptor_pb2.FileDescriptorProto(name="demo/common.proto", package="demo", syntax="proto3")
    channel = common.enum_type.add(name="Channel")
    channel.value.add(name="WEB", number=0)
    channel.value.add(name="APP", number=1)
    payment_file = descriptor_pb2.FileDescriptorProto(name="demo/payment.proto", package="demo", syntax="proto3")
    payment_file.dependency.extend(["demo/common.proto", "google/protobuf/timestamp.proto"])
    payment_file.message_type.add(name="Envelope").field.add(name="trace", number=1, type=F.TYPE_STRING)
    payment = payment_file.message_type.add(name="Payment")
    fields = [
        ("id", F.TYPE_STRING, None), ("account", F.TYPE_STRING, None), ("ts", F.TYPE_INT64, None),
        ("features", F.TYPE_DOUBLE, None), ("at", F.TYPE_MESSAGE, ".google.protobuf.Timestamp"),
        ("channel", F.TYPE_ENUM, ".demo.Channel"),
    ] + ([("note", F.TYPE_STRING, None)] if with_note else [])  # fmt: skip
    for number, (name, kind, type_name) in enumerate(fields, start=1):
        label = F.LABEL_REPEATED if name == "features" else F.LABEL_OPTIONAL
        field = payment.field.add(name=name, number=number, type=kind, label=label)
        if type_name:
            field.type_name = type_name
    pool = DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(common)
    pool.Add(payment_file)
    return GetMessageClass(pool.FindMessageTypeByName("demo.Payment"))
