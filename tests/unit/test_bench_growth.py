"""bench.growth's pieces that need no broker: a process's memory from its /proc status text, demo
events rewritten to exactly N distinct keys, the state's share against the control, and the report
rendered from a results file's shape."""

from __future__ import annotations

import orjson
import pytest

from bench.growth import counts, keyed, keyed_events, report, state_share, status_memory, summary

STATUS = """Name:\tpython
Umask:\t0022
State:\tS (sleeping)
VmPeak:\t 3012340 kB
VmSize:\t 2990000 kB
VmHWM:\t  812344 kB
VmRSS:\t  748800 kB
RssAnon:\t  600000 kB
Threads:\t12
"""


def test_rss_and_its_peak_are_read_from_proc_status_in_bytes() -> None:
    assert status_memory(STATUS) == {"vmrss": 748_800 * 1024, "vmhwm": 812_344 * 1024}


def test_the_key_counts_are_a_comma_list() -> None:
    assert counts("10000,1_000_000") == [10_000, 1_000_000]
    assert counts("200,") == [200]


def test_events_in_chunks_have_exactly_n_distinct_keys_that_match_their_account_field() -> None:
    n, chunk = 12_345, 5_000
    items = [item for start in range(0, n, chunk) for item in keyed_events(start, min(chunk, n - start))]
    assert len(items) == n
    assert len({key for key, _ in items}) == n
    docs = [orjson.loads(value) for _, value in items]
    assert all(doc["account"].encode() == key for doc, (key, _) in zip(docs, items, strict=True))
    assert len({doc["id"] for doc in docs}) == n  # and every event is accounted for by its own output
    assert {len(key) for key, _ in items} == {12}


def test_rewriting_keys_keeps_every_other_field() -> None:
    value = orjson.dumps({"id": "tx-1-0", "account": "acct-00042", "features": [1.0, 2.0], "amount": 3.5})
    [(key, rewritten)] = keyed([(b"acct-00042", value)], first=7)
    assert key == b"acct-0000007"
    assert orjson.loads(rewritten) == {"id": "tx-1-0", "account": "acct-0000007", "features": [1.0, 2.0], "amount": 3.5}


def memory_row(label: str, keys: int, per_key: float) -> dict:
    baseline = 700 * 2**20
    return {
        "label": label,
        "keys": keys,
        "baseline_rss": baseline,
        "baseline_hwm": baseline,
        "rss": baseline + per_key * keys,
        "hwm": baseline + 2 * per_key * keys,
        "bytes_per_key": per_key,
        "ingest_per_s": 30_000.0,
        "cpu_us_per_event": 40.0,
        "ready_s": 5.0,
        "scored": keys,
        "seconds": keys / 30_000,
    }


def drain_row(partitions: int, round_: int, strategy: str, rate: float, cpu: float) -> dict:
    return {
        "partitions": partitions,
        "round": round_,
        "strategy": strategy,
        "drain_per_s": rate,
        "seconds": 2.0,
        "cpu_us_per_event": cpu,
    }


def test_the_states_share_is_its_bytes_per_key_less_the_controls() -> None:
    rows = [memory_row("plain", 10_000, 300.0), memory_row("state", 10_000, 900.0), memory_row("plain", 100, 5.0)]
    rows.append(memory_row("state", 100, 7.0))
    assert state_share(rows) == {"100": 2.0, "10000": 600.0}


def test_the_summary_means_the_rounds_and_leaves_out_drains_too_short_for_a_cpu_figure() -> None:
    rows = [
        drain_row(1, 1, "adaptive", 60_000.0, 20.0),
        drain_row(1, 1, "minimal", 100_000.0, 10.0),
        drain_row(1, 2, "adaptive", 40_000.0, 0.0),
        drain_row(1, 2, "minimal", 100_000.0, 12.0),
    ]
    [(p, s)] = summary(rows, [1]).items()
    assert p == "1"
    assert s["adaptive_per_s"] == 50_000.0 and s["minimal_per_s"] == 100_000.0
    assert s["ratio"] == 0.5 and s["round_ratios"] == [0.6, 0.4]
    assert s["adaptive_cpu_us"] == 20.0 and s["minimal_cpu_us"] == pytest.approx(11.0)


def test_the_report_renders_every_section() -> None:
    memory = [memory_row("plain", 10_000, 300.0), memory_row("state", 10_000, 900.0)]
    rows = [
        drain_row(p, 1, s, 50_000.0 * (2 if s == "minimal" else 1), 20.0)
        for p in (1, 4)
        for s in ("adaptive", "minimal")
    ]
    rows[-1]["cpu_us_per_event"] = 0.0
    text = report(
        {
            "started": "2026-12-07 19:00",
            "machine": "2 CPUs",
            "load_before": (1.0,),
            "load_after": (1.5,),
            "command": "python -m bench.growth --keys 10000 --partitions 1,4 --rounds 1",
            "model": "fraud-mlp",
            "memory_partitions": 4,
            "backlog": 200_000,
            "partitions": [1, 4],
            "rounds": 1,
            "memory": memory,
            "state_bytes_per_key": state_share(memory),
            "throughput": rows,
            "throughput_summary": summary(rows, [1, 4]),
        }
    )
    assert ".venv/bin/python -m bench.growth --keys 10000 --partitions 1,4 --rounds 1" in text
    assert "| state | 10,000 | 700.0 | 708.6 | 717.2 | 8.6 | 900 | 30,000 |" in text
    assert "**600 bytes per key** at 10,000 keys" in text
    assert "| 1 | 50,000 | 100,000 | **0.50** (0.50) | 20.0 | 20.0 |" in text
    assert "| 4 | 50,000 | 100,000 | **0.50** (0.50) | 20.0 | n/a |" in text
    assert "| 4 | 1 | minimal | 100,000 | 2.0 | n/a |" in text
    assert "Throughput with 1, 4 partitions per worker" in text
