"""bench.state's pieces that need no broker: its features parse as a config, its profile
stages classify py-spy stacks, and its report renders from a results file's shape."""

from __future__ import annotations

from pathlib import Path

from bench.state import STATE, profile_shares, report, state_spec


def test_the_benchmark_features_are_a_valid_state_config() -> None:
    spec = state_spec()
    assert spec.capacity == 16
    assert spec.fields == ("amount", "merchant_risk", "foreign")
    assert len(spec.features) == STATE.count("kind =")


def test_profile_stages_put_the_changelog_flush_before_the_features(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(
        "go (x.py:1);Changelog.flush (streams/kafka/changelog.py:66);encode_state (streams/features/snapshot.py:2) 2\n"
        "run (x.py:1);FeatureStep.compute (streams/features/step.py:70) 1\n"
        "run (x.py:1);idle (x.py:2) 1\n"
    )
    shares = profile_shares(raw)
    assert shares["changelog flush: encode_state"] == 0.5
    assert shares["features: the rest of FeatureStep.compute"] == 0.25
    assert shares["other (loop, batcher, ...)"] == 0.25
    assert shares["samples"] == 4


def test_the_report_renders_every_section() -> None:
    rounds = [
        {"round": 1, "label": "plain", "stateful": False, "drain_per_s": 40_000.0},
        {
            "round": 1,
            "label": "state",
            "stateful": True,
            "drain_per_s": 24_000.0,
            "changelog_records_per_event": 0.5,
            "changelog_bytes_per_event": 170.0,
        },
    ]
    memory = {
        "keys": 1000,
        "key_bytes": 12,
        "capacity": 16,
        "fields": 3,
        "slots_allocated": 1024,
        "numpy_bytes_per_key": 340.0,
        "python_bytes_per_key": 115.0,
        "bytes_per_key": 455.0,
        "rss_delta_per_key": 500.0,
        "fed_per_s": 1e5,
    }
    timed = {"keys_restored": 1000, "seconds": 0.1, "keys_per_s": 1e4}
    restore = {
        "keys_written": 1000,
        "events_per_key": 16,
        "bytes": 356_000,
        "bytes_per_key": 356.0,
        "flushed_keys_per_s": 3e4,
        "memory": timed,
        "rocksdb": timed | {"disk_bytes_per_key": 200.0, "rss_delta_mib": 50.0},
        "rocksdb_restart": timed | {"seconds": 0.01, "keys_per_s": 1e5},
    }
    text = report(
        {
            "started": "2026-11-29 06:00",
            "machine": "2 CPUs",
            "load_before": (1.0,),
            "load_after": (1.0,),
            "command": "python -m bench.state --rounds 1",
            "backlog": 1000,
            "partitions": 4,
            "rounds": rounds,
            "ratio": 0.6,
            "ratios": {"state": 0.6, "rocksdb": 0.5},
            "round_ratios": {"state": [0.6], "rocksdb": [0.5]},
            "input_bytes_per_event": 375.0,
            "profile": {"model (torch)": 1.0, "samples": 10},
            "memory": memory,
            "restore": restore,
        }
    )
    assert ".venv/bin/python -m bench.state --rounds 1" in text
    assert "**0.60**" in text and "meets" in text
    assert "| 1 | state | 24,000 | 0.500 | 170.0 |" in text
    assert "455 bytes per key" in text and "restarted on its local copy (it reads only" in text
    assert "`rocksdb` / plain: **0.50**" in text
