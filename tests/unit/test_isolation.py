from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson
import pytest

from streams.errors import ModelUnavailableError
from streams.flow.isolation import IsolatingScorer
from tests.fakes import SumRunner
from tests.unit.test_pipeline import make_pipeline, rec


class PoisonedRunner(SumRunner):
    """Raises on any batch holding a row whose first value is ``poison``."""

    def __init__(self, poison: float = 13.0) -> None:
        super().__init__()
        self.poison = poison

    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        self.batches.append(int(inputs[0].shape[0]))
        if (inputs[0][:, 0] == self.poison).any():
            raise ValueError("cannot handle 13")
        return inputs[0].sum(axis=1)


class BrokenRunner(SumRunner):
    """Fails on everything, as a model with broken weights or a lost device does."""

    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        self.batches.append(int(inputs[0].shape[0]))
        raise RuntimeError("CUDA error: device lost")


class SmallBatchesOnlyRunner(SumRunner):
    """Out of memory above 4 rows."""

    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        self.batches.append(int(inputs[0].shape[0]))
        if inputs[0].shape[0] > 4:
            raise MemoryError("out of memory")
        return inputs[0].sum(axis=1)


def rows(values: list[float]) -> list[np.ndarray]:
    return [np.array([[v, 1.0] for v in values], dtype=np.float32)]


async def test_a_healthy_batch_costs_one_model_call():
    runner = PoisonedRunner()
    result = await IsolatingScorer(runner).predict(rows([1, 2, 3]))
    assert runner.batches == [3]
    assert result.kept.tolist() == [0, 1, 2]
    assert result.predictions.tolist() == [2, 3, 4]
    assert result.failures == []


async def test_bisection_finds_each_poisonous_row_and_scores_the_rest_in_order():
    runner = PoisonedRunner()
    scorer = IsolatingScorer(runner)
    await scorer.predict(rows([0]))  # the canary: an input the model scored before
    values = [float(v) + 100 for v in range(64)]
    values[5] = values[40] = 13.0
    result = await scorer.predict(rows(values))
    assert [f.row for f in result.failures] == [5, 40]
    assert "ValueError: cannot handle 13" in result.failures[0].message
    assert result.kept.tolist() == [i for i in range(64) if i not in (5, 40)]
    assert result.predictions.tolist() == [values[i] + 1 for i in result.kept.tolist()]
    # k culprits in n rows: about 2k log2(n) calls, not n.
    assert len(runner.batches) < 2 * 2 * 6 + 4


async def test_a_model_that_fails_on_everything_is_unavailable_not_a_stream_of_bad_events():
    runner = BrokenRunner()
    with pytest.raises(ModelUnavailableError, match="device lost"):
        await IsolatingScorer(runner).predict(rows([1, 2, 3, 4]))
    assert runner.batches == [4, 1], "the batch, then the canary: no bisection over a broken model"


async def test_a_batch_too_big_for_memory_is_scored_in_smaller_parts():
    runner = SmallBatchesOnlyRunner()
    result = await IsolatingScorer(runner).predict(rows([float(v) for v in range(16)]))
    assert result.failures == []
    assert result.kept.tolist() == list(range(16))
    assert result.predictions.tolist() == [v + 1.0 for v in range(16)]


async def test_the_pipeline_dead_letters_only_the_event_the_model_raises_on():
    pipeline, _, sink = make_pipeline()
    pipeline.use_runner(PoisonedRunner())
    batch = [rec(i, orjson.dumps({"id": i, "x": [i, 1]})) for i in range(20)] + [rec(20, b"nope")]
    outcome = await pipeline.process(batch)
    assert (outcome.events, outcome.scored, outcome.dead_lettered) == (21, 19, 2)
    assert outcome.errors == {"ModelError": 1, "InvalidJSON": 1}
    scored = [orjson.loads(r.value) for r in sink.records if r.topic == "out"]
    assert [s["id"] for s in scored] == [i for i in range(20) if i != 13]
    assert all(s["prediction"] == s["id"] + 1 for s in scored)
    dead = [orjson.loads(r.value) for r in sink.records if r.topic == "dlq"]
    assert [(d["source"]["offset"], d["error"]) for d in dead] == [(13, "ModelError"), (20, "InvalidJSON")]
    assert dead[0]["reason"] == "the model raised ValueError: cannot handle 13"
    assert orjson.loads(dead[0]["value"]) == {"id": 13, "x": [13, 1]}
