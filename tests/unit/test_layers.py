"""The layers of the code, as the README's Layout draws them: checked on the imports themselves."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENGINE = sorted((ROOT / "streams").rglob("*.py"))
CORE = [p for p in ENGINE if p.parent != ROOT / "streams" / "kafka"]


def imported(path: Path, *, typing_too: bool = True) -> set[str]:
    names: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    skipped = set() if typing_too else {id(n) for n in ast.walk(tree) if _is_type_checking_block(n)}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and id(node) in skipped:
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


# What each folder of the engine may import from the rest of it (its package docstring says
# the same in words): the folders show the design only while the imports keep to it.
SHARED = ("streams.records", "streams.errors", "streams.source", "streams.metrics")
ALLOWED = {
    "streams": SHARED,
    "streams/codecs": (*SHARED, "streams.codecs"),
    "streams/features": (*SHARED, "streams.features"),
    "streams/flow": (*SHARED, "streams.flow", "streams.codecs", "streams.features"),
    "streams/backfill": (*SHARED, "streams.backfill", "streams.flow", "streams.codecs"),
    "streams/kafka": ("streams",),
}


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


@pytest.mark.parametrize("path", ENGINE, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_folder_of_the_engine_imports_only_what_its_docstring_allows(path):
    allowed = ALLOWED[str(path.parent.relative_to(ROOT))]
    engine = {n for n in imported(path, typing_too=False) if under(n, "streams")}
    assert {n for n in engine if not under(n, *allowed)} == set()


def test_each_folder_of_the_engine_says_what_it_holds_and_may_import():
    for folder in ALLOWED:
        doc = ast.get_docstring(ast.parse((ROOT / folder / "__init__.py").read_text())) or ""
        assert folder == "streams" or "May import" in doc, f"{folder}/__init__.py"


# The app reaches Kafka through one module, which builds every client from the config; the rest
# of it hands those clients to the engine's adapters (streams/kafka/) and speaks the engine's types.
APP = sorted((ROOT / "app").rglob("*.py"))
KAFKA_MODULE = "app/kafka_clients.py"


def _app_name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize(
    "path",
    [p for p in APP if _app_name(p) != KAFKA_MODULE],
    ids=_app_name,
)
def test_no_module_of_the_app_but_its_kafka_module_imports_the_kafka_client(path):
    wrong = {n for n in imported(path) if under(n, "aiokafka")}
    assert not wrong, f"{_app_name(path)} imports {sorted(wrong)}: make clients in {KAFKA_MODULE}, use streams/kafka/"
