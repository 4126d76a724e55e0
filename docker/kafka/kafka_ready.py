"""Ask a Kafka broker for its metadata and report whether it answered.

Used by docker/kafka-local to decide that the broker is up. Standard library only,
so it works before the project's virtualenv exists. It sends one Metadata request
(v4, the oldest version Kafka 4.x still accepts) for no topics, which every live
broker answers with its broker list.

Exit status: 0 when the broker answered with at least one broker, 1 otherwise.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys

METADATA_API_KEY = 3
METADATA_VERSION = 4
CLIENT_ID = b"sluice-kafka-ready"


def metadata_request(correlation_id: int) -> bytes:
    header = struct.pack(">hhih", METADATA_API_KEY, METADATA_VERSION, correlation_id, len(CLIENT_ID))
    # topics: empty array (not null, which would mean "all topics"); allow_auto_topic_creation: false.
    body = struct.pack(">ib", 0, 0)
    payload = header + CLIENT_ID + body
    return struct.pack(">i", len(payload)) + payload


def read_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("broker closed the connection mid-response")
        chunks.extend(chunk)
    return bytes(chunks)


def broker_count(host: str, port: int, timeout: float) -> int:
    """Return how many brokers the cluster reports; raise OSError if it does not answer."""
    correlation_id = 7
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(metadata_request(correlation_id))
        (size,) = struct.unpack(">i", read_exact(sock, 4))
        response = read_exact(sock, size)
    got_id, _throttle_ms, brokers = struct.unpack(">iii", response[:12])
    if got_id != correlation_id:
        raise ConnectionError(f"unexpected correlation id {got_id}")
    return brokers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args()
    try:
        count = broker_count(args.host, args.port, args.timeout)
    except (OSError, struct.error) as exc:
        print(f"no metadata from {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    if count < 1:
        print(f"{args.host}:{args.port} answered but reports no brokers yet", file=sys.stderr)
        return 1
    print(f"broker at {args.host}:{args.port} answered: {count} broker(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
