"""bench.report renders a drain-only latency run: the drain rule in its header, and each
drain's backlog and duration in its row."""

from __future__ import annotations

from pathlib import Path

from bench.report import write_latency_report


def test_a_drain_only_report_states_the_rule_and_each_drain_s_length(tmp_path: Path) -> None:
    results = {
        "started": "2026-12-01 10:00:00",
        "cpus": 2,
        "partitions": 2,
        "budget_ms": 50,
        "strategies": ["adaptive", "quix-sink"],
        "drain_only": True,
        "drain_rule": {"min_seconds": 10.0, "margin": 1.25, "max_backlog": 1_500_000},
        "models": {
            "fraud-mlp": {
                "model_alone": {"best_batch": 512, "best_per_s": 2_000_000.0},
                "transport_alone_per_s": 60_000.0,
                "saturation_per_s": {},
                "drain_per_s": {"adaptive": 150_000.0, "quix-sink": 15_000.0},
                "drain_backlog": {"adaptive": 1_500_000, "quix-sink": 187_500},
                "drain_seconds": {"adaptive": 9.2, "quix-sink": 12.4},
                "points": [],
            }
        },
    }
    write_latency_report(results, tmp_path)
    page = (tmp_path / "latency.md").read_text()
    assert "lasts at least 10 s at that strategy's own rate" in page
    assert "holds 1,500,000 events" in page
    assert "sluice adaptive batcher, draining 1,500,000 events in 9.2 s, under 10 s | 150,000 |" in page
    assert "draining 187,500 events in 12.4 s | 15,000 |" in page
    assert not (tmp_path / "latency.png").exists()
