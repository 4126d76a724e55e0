"""``python -m bench.growth`` as a person runs it, with tiny sizes, on the real broker: the report and
its JSON have a figure for every measurement, and the run leaves no topic behind."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from tests.integration.kafka_helpers import ROOT, unique


def test_the_growth_benchmark_reports_memory_per_key_and_throughput_per_partition_count(
    kafka: str, tmp_path: Path
) -> None:
    prefix = unique("growth")  # the session deletes what a failed run leaves
    command = [sys.executable, "-m", "bench.growth", "--keys", "200", "--backlog", "2000", "--rounds", "1"]
    command += ["--partitions", "1,2", "--settle", "1", "--prefix", prefix, "--out", str(tmp_path)]
    env = {**os.environ, "SLUICE_BENCH_BOOTSTRAP": kafka}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / "growth.md").read_text()
    assert "| state | 200 |" in report and "| plain | 200 |" in report
    assert "bytes per key** at 200 keys" in report
    results = json.loads((tmp_path / "growth.json").read_text())
    assert [(m["label"], m["keys"], m["scored"]) for m in results["memory"]] == [
        ("plain", 200, 200),
        ("state", 200, 200),
    ]
    assert all(m["baseline_rss"] > 0 and m["rss"] > 0 for m in results["memory"])
    assert sorted(results["throughput_summary"]) == ["1", "2"]
    assert all(math.isfinite(s["ratio"]) and s["ratio"] > 0 for s in results["throughput_summary"].values())
    assert asyncio.run(topics_named(kafka, prefix)) == []


async def topics_named(bootstrap: str, part: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return [t for t in await admin.list_topics() if part in t]
    finally:
        await admin.close()
