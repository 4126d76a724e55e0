"""The worker's model-swap endpoint against hostile requests, on a real worker and broker."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.integration.kafka_helpers import free_port, running_worker, topics_for, unique, write_config


async def post_raw(port: int, authorization: bytes) -> int:
    """POST a swap with exactly these header bytes (no client library would send them); the status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b'{"demo": "fraud-mlp", "version": "9"}'
    writer.write(
        b"POST /pipelines/adm/model HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
        + authorization
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )
    await writer.drain()
    status = int((await reader.readline()).split(b" ")[1])
    writer.close()
    await writer.wait_closed()
    return status


async def test_malformed_or_wrong_tokens_get_401_and_a_bounded_log(kafka, tmp_path):
    config = write_config(tmp_path, bootstrap=kafka, pipeline="adm", partitions=1, **topics_for(unique("adm")))
    port, log = free_port(), tmp_path / "worker.log"
    with running_worker(
        config, log, ready_text="partitions assigned: ", web_port=port, env={"SLUICE_ADMIN_TOKEN": "s3cret"}
    ):
        malformed = [b"Bearer \xff\xfe", b"Bearer s3cret\x80", b"\xc3\x28 s3cret"]
        statuses = [await post_raw(port, header) for header in malformed]
        statuses += [await post_raw(port, b"Bearer wrong-%d" % i) for i in range(50)]
        assert await post_raw(port, b"Bearer s3cret") == 200, "the right token still swaps"
    assert statuses == [401] * len(statuses)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text
    refusals = text.count("model swap refused from")
    # One warning per minute at most: 53 refusals in far less than a minute would log once,
    # but the check is only that the log does not grow with each request.
    assert 1 <= refusals < 10, f"{refusals} warnings for {len(statuses)} refused requests"


async def test_the_worker_says_it_is_ready_once_its_partitions_are_assigned(kafka, tmp_path):
    config = write_config(tmp_path, bootstrap=kafka, pipeline="rdy", partitions=2, **topics_for(unique("rdy")))
    port, log = free_port(), tmp_path / "worker.log"
    with running_worker(config, log, ready_text="partitions assigned: ", web_port=port):
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/ready") as response:
            assert response.status == 200
            assert await response.json() == {"ready": True, "pipelines": {"rdy": {"ready": True, "partitions": 2}}}
    # What the first seconds cost, said apart from serving.
    assert "pipeline rdy: ready: 2 partition(s) assigned" in log.read_text()
