"""The layers of the code, as the README's Layout draws them: checked on the imports themselves."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENGINE = sorted((ROOT / "streams").rglob("*.py"))
CORE = [p for p in ENGINE if p.parent == ROOT / "streams"]


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def under(name: str, *roots: str) -> bool:
    return any(name == root or name.startswith(root + ".") for root in roots)


@pytest.mark.parametrize("path", ENGINE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_engine_imports_neither_faust_nor_the_app_nor_torch(path):
    wrong = {n for n in imported(path) if under(n, "faust", "mode", "app", "torch")}
    wrong |= {n for n in imported(path) if under(n, "models") and n != "models.protocol"}
    assert not wrong, f"{path.name} imports {sorted(wrong)}"


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_of_the_engine_knows_no_kafka_client(path):
    wrong = {n for n in imported(path) if under(n, "aiokafka", "streams.kafka")}
    assert not wrong, f"{path.name} imports {sorted(wrong)}: Kafka adapters belong in streams/kafka/"


def test_no_engine_module_is_long():
    lengths = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in ENGINE}
    assert {name: n for name, n in lengths.items() if n > 260} == {}
