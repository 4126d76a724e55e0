"""``python -m bench.guarantee_costs`` as a person runs it (no broker): a table per model, each stage
a row with both pipelines' figures, and the JSON beside it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("decode", "model", "scoring bookkeeping", "encode", "produce framing", "headers", "batching")


def test_the_stage_costs_command_writes_a_table_of_every_stage(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench.guarantee_costs", "--models", "fraud-mlp", "--seconds", "0.01"]
    result = subprocess.run(
        [*command, "--rounds", "1", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    report = (tmp_path / "guarantee_costs.md").read_text()
    assert "## fraud-mlp" in report and "| **all stages** |" in report
    rows = json.loads((tmp_path / "guarantee_costs.json").read_text())["models"]["fraud-mlp"]
    assert [r["stage"] for r in rows][: len(STAGES)] == list(STAGES)
    assert all(math.isfinite(r["sluice_us"]) and math.isfinite(r["minimal_us"]) for r in rows)
