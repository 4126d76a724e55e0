"""What every peer worker in the benchmark shares, so that the peers differ only in the
framework around the model: the settings the runner passes them (``BENCH_*`` environment
variables, see ``bench.latency.start_worker``), the demo model loaded and scored the same
way, and the same prediction record per event.

A peer scores inline, as such workers are usually written: orjson-decoded events, the
trained demo model under ``torch.inference_mode()`` in the worker's own thread, one JSON
output per event keyed like its input and carrying the input's timestamp (``event_ts``,
milliseconds), which the runner needs for end-to-end latency.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from app.config.pipeline_toml import DEMO_STATE
from models.loading import ModelSpec, load_model
from models.registry import DEMO_MODELS


@dataclass(frozen=True)
class PeerSettings:
    mode: str
    model: str
    topic_in: str
    topic_out: str
    bootstrap: str
    app_id: str
    partitions: int
    take: int
    within: float
    torch_threads: int

    @classmethod
    def from_env(cls, default_mode: str) -> PeerSettings:
        mode = os.environ.get("BENCH_MODE", default_mode)
        broker = os.environ.get("BENCH_BROKER", "127.0.0.1:9092")
        return cls(
            mode=mode,
            model=os.environ.get("BENCH_MODEL", "fraud-mlp"),
            topic_in=os.environ.get("BENCH_IN", "bench-in"),
            topic_out=os.environ.get("BENCH_OUT", "bench-out"),
            bootstrap=broker.removeprefix("kafka://"),
            app_id=os.environ.get("BENCH_APP_ID", f"bench-{mode}"),
            partitions=int(os.environ.get("BENCH_PARTITIONS", "2")),
            take=int(os.environ.get("BENCH_TAKE", "256")),
            within=float(os.environ.get("BENCH_WITHIN", "0.01")),
            torch_threads=int(os.environ.get("BENCH_TORCH_THREADS", "0")),
        )


class DemoModel:
    """A demo model by name, scoring decoded events (dicts) in one call."""

    def __init__(self, name: str, *, torch_threads: int = 0) -> None:
        # 0 keeps torch's default; the runner passes 1, as for sluice's worker.
        torch.set_num_threads(torch_threads or torch.get_num_threads())
        self.module = load_model(ModelSpec(demo=name)).module.eval()
        self.fields = DEMO_MODELS[name].inputs

    def score(self, docs: Sequence[Mapping[str, Any]]) -> list[float]:
        tensors = [torch.from_numpy(np.array([d[f] for d in docs], dtype=np.float32)) for f in self.fields]
        with torch.inference_mode():
            return list(self.module(*tensors).tolist())


# The transformer's input ``history``: the account's last transactions, this one included, as
# sluice's demo pipeline keeps them per key (read from its state table, app.pipeline_toml.DEMO_STATE,
# so the peers build what sluice serves); a peer keeps the rows in its framework's own per-key
# state and passes them here.
_STATE = tomllib.loads(DEMO_STATE["fraud-transformer"].format(pipeline="p"))["pipelines"]["p"]["state"]
_HISTORY = _STATE["features"]["history"]
HISTORY_EVENTS: int = _HISTORY["n"]
HISTORY_FIELDS: tuple[str, ...] = tuple(_HISTORY["fields"])


def with_history(doc: dict[str, Any], kept: list[list[float]]) -> tuple[dict[str, Any], list[list[float]]]:
    """``doc`` with its ``history`` (zero rows first, a mask column last), and the rows to keep."""
    kept = [*kept, [float(doc[f]) for f in HISTORY_FIELDS]][-HISTORY_EVENTS:]
    padding = [[0.0] * (len(HISTORY_FIELDS) + 1)] * (HISTORY_EVENTS - len(kept))
    return {**doc, "history": padding + [[*row, 1.0] for row in kept]}, kept


def needs_history(model: str) -> bool:
    return model in DEMO_STATE


def prediction_record(doc: Mapping[str, Any], prediction: float, event_ts_ms: int) -> dict[str, Any]:
    """The output every peer produces for one event."""
    return {"id": doc["id"], "prediction": prediction, "event_ts": event_ts_ms}
