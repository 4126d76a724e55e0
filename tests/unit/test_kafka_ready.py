from __future__ import annotations

import importlib.util
import socket
import struct
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "kafka_ready", Path(__file__).resolve().parents[2] / "docker" / "kafka" / "kafka_ready.py"
)
assert SPEC and SPEC.loader
kafka_ready = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(kafka_ready)


def test_the_probe_sends_a_metadata_v4_request_for_no_topics():
    request = kafka_ready.metadata_request(correlation_id=9)
    (size,) = struct.unpack(">i", request[:4])
    assert size == len(request) - 4
    api_key, version, correlation, client_len = struct.unpack(">hhih", request[4:14])
    assert (api_key, version, correlation) == (3, 4, 9)
    topics, auto_create = struct.unpack(">ib", request[14 + client_len :])
    assert (topics, auto_create) == (0, 0)


def test_the_probe_says_no_when_nothing_listens():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OSError):
        kafka_ready.broker_count("127.0.0.1", port, timeout=1)
