"""Running a driver as the task of a worker's service, and stopping it: shared by the pipeline's
service and its re-keying stage's."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from streams.flow.driver import Driver

log = logging.getLogger(__name__)

# How long a stopping worker lets the batch in flight finish (scored, emitted, committed).
STOP_GRACE_S = 20.0


async def stop_driver(driver: Driver[Any] | None, task: asyncio.Task[None] | None, label: str) -> None:
    """Stop taking events and let the batch in flight finish; past ``STOP_GRACE_S``, cancel it (its
    events are not committed, so they are scored again by the partitions' next owner)."""
    if driver is None or task is None or task.done():
        return
    driver.stop()
    try:
        await asyncio.wait_for(asyncio.shield(task), STOP_GRACE_S)
    except TimeoutError:
        log.warning("%s: batch in flight did not finish in %.0fs", label, STOP_GRACE_S)
        task.cancel()
    except Exception:  # noqa: BLE001 - the service's done-callback reported it
        pass
