"""bench.drain_profile reads py-spy's stacks into stages and its report adds up."""

from __future__ import annotations

import pytest

from bench.drain_profile import OTHER, STAGES, WAITING, report, stage_of, stage_shares, summary

TORCH = "Linear.forward (torch/nn/modules/linear.py:125)"
RUNNER = "InferenceThread._run (models/inference_thread.py:52)"


def stack(*frames: str) -> str:
    return ";".join(["_run_module_as_main (<frozen runpy>:198)", *frames])


def named(prefix: str) -> str:
    return next(name for name, _ in STAGES if name.startswith(prefix))


DISPATCHER = "Dispatcher.run (streams/flow/dispatcher.py:90)"
MINIMAL_LOOP = "run (bench/minimal.py:140)"


@pytest.mark.parametrize(
    ("frames", "stage"),
    [
        ((RUNNER, TORCH), "model (torch)"),
        ((DISPATCHER, "FastDecoder._structs (streams/codecs/fast_decode.py:152)"), "decode"),
        ((MINIMAL_LOOP, "decode_events (bench/minimal.py:78)"), "decode"),
        ((MINIMAL_LOOP, "score (bench/minimal.py:82)", TORCH), "model (torch)"),
        (
            ("send_in_batches (streams/kafka/batches.py:120)", "append (aiokafka/producer/message_accumulator.py:77)"),
            named("producer"),
        ),
        (("Feeder.run (streams/flow/feeder.py:40)", "getmany (aiokafka/consumer/consumer.py:1200)"), named("fetch")),
        (("Acknowledger.run (streams/flow/acknowledger.py:63)",), named("acknowledgements")),
        (
            ("commit (streams/kafka/group_commits.py:40)", "commit (aiokafka/consumer/group_coordinator.py:9)"),
            named("acknowledgements"),
        ),
        (("Faust.run (faust/streams.py:10)",), OTHER),
        ((MINIMAL_LOOP,), named("engine loop")),
        (("Worker.execute_from_commandline (mode/worker.py:264)",), OTHER),
    ],
)
def test_a_stack_is_the_stage_of_its_innermost_marked_frame(frames: tuple[str, ...], stage: str) -> None:
    assert stage_of(stack(*frames)) == stage


def test_shares_count_busy_samples_and_skip_empty_stacks_and_the_inference_threads_waits() -> None:
    waits = f"{stack('Thread.run (threading.py:982)', RUNNER)} 7"
    raw = "\n".join([f"{stack(RUNNER, TORCH)} 30", f"{stack('run (bench/minimal.py:1)')} 10", " 50", "garbage", waits])
    shares, total, waiting = stage_shares(raw)
    assert WAITING in RUNNER
    assert (total, waiting) == (40, 7)
    assert shares["model (torch)"] == pytest.approx(0.75)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert set(shares) == {name for name, _ in STAGES} | {OTHER}


def test_summary_and_report_put_each_stage_in_cpu_per_event() -> None:
    names = [name for name, _ in STAGES] + [OTHER]
    rounds = []
    for strategy, cpu, rate in (("adaptive", 10.0, 90_000.0), ("minimal", 8.0, 120_000.0)):
        shares = dict.fromkeys(names, 0.0) | {"decode": 0.5, "model (torch)": 0.5}
        rounds.append({"round": 1, "strategy": strategy, "per_s": rate, "cpu_us": cpu, "samples": 9, "shares": shares})
    s = summary(rounds)
    assert s["adaptive"]["stage_us"]["decode"] == pytest.approx(5.0)
    assert s["minimal"]["stage_us"]["decode"] == pytest.approx(4.0)
    text = report({"started": "now", "machine": "m", "command": "python -m bench.drain_profile", "backlog": 10,
                   "partitions": 2, "rounds": rounds, "summary": s})  # fmt: skip
    assert "**0.75** of the minimal pipeline" in text
    assert "| decode | 4.00 | 5.00 | +1.00 |" in text
    assert "| **all** | 8.00 | 10.00 | +2.00 |" in text
