"""A worker stops while one of its models hangs (a stuck device, a deadlock: the inference timeout
gave up on its batch, but its thread never returns): the pipeline stops and leaves its group
within seconds, never after a timeout per queued batch nor with the event loop frozen, and the
process exits though the model never returns: a shadow's process is terminated, none is left behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from app.demo_events import demo_events
from tests.integration.kafka_helpers import (
    free_port,
    read_topic,
    running_worker,
    topics_for,
    unique,
    wait_for_log,
    write_config,
)
from tests.integration.test_model_roles import WEIGHTS, produce_in_steps

# The shadow's inference timeout: far longer than any stop may take.
TIMEOUT_MS = 600_000


async def test_a_worker_whose_shadow_hangs_stops_its_pipeline_within_seconds(kafka, tmp_path):
    topics = topics_for(unique("hung-shadow"))
    flag = tmp_path / "hang"
    extra = (
        f'shadows.stuck = {{ class = "tests.integration.faulty_models:HangingFraudMLP", state_dict = "{WEIGHTS}", '
        f'version = "h1", init_args = {{ hang_flag = "{flag}" }}, queue_batches = 4 }}\n'
        f"breaker = {{ timeout_ms = {TIMEOUT_MS} }}\n"
    )
    config = write_config(tmp_path, bootstrap=kafka, pipeline="hs", extra=extra, **topics)
    events = list(demo_events(400, seed=45))
    log = tmp_path / "worker.log"
    with running_worker(config, log, ready_text="pipeline hs: ready", web_port=free_port()) as worker:
        try:
            flag.touch()
            await produce_in_steps(kafka, topics["input_topic"], events, steps=4)
            await read_topic(kafka, topics["output_topic"], expected=len(events), within_s=60)
            children = children_of(worker.pid)
            assert children, "the shadow runs in a process of its own"
            stopping = time.monotonic()
            worker.send_signal(signal.SIGTERM)
            # Before: Shadow.drain waited the shadow's timeout for each queued batch (10 minutes each
            # here), then TorchRunner.aclose blocked the event loop on the stuck thread, for good.
            wait_for_log(log, "pipeline hs stopped", proc=worker, timeout=45)
            took = time.monotonic() - stopping
            # The model still hangs: its thread must not keep the process alive (models.inference_thread).
            worker.wait(timeout=30)
            exited = time.monotonic() - stopping
        finally:
            flag.unlink(missing_ok=True)  # the thread returns, if the process still runs
    text = log.read_text()
    assert took < 30, f"the pipeline took {took:.0f}s to stop"
    assert worker.returncode == 0, f"the worker exited with {worker.returncode} after {exited:.0f}s"
    assert "shadow stuck did not score its last batches" in text
    assert "shadow stuck: its process was still scoring a batch when closed: terminated" in text
    assert not [pid for pid in children if alive(pid)], "a model's process outlived the worker"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def children_of(pid: int) -> list[int]:
    """The model processes ``pid`` spawned (not multiprocessing's resource tracker, which leaves by itself)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue  # ended while listed
        if int(fields[1]) == pid and b"spawn_main" in command:
            found.append(int(stat.parent.name))
    return found
