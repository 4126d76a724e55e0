"""Crafted and damaged ``torch.export`` archives against the real CLI and a live worker.

A backfill or a worker given one stops with one line and status 2; a swap to one answers
422 and the old model keeps serving. Each crafted archive shows a checker reading it like
Python a sound program and torch's reader pickled weights (``tests/crafted_archives.py``):
one through a second central directory, one through names Python and torch fold to
different entries. The marker folder their pickles would create must never appear.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from app.topics import ensure_topics
from tests.crafted_archives import case_folded, export_tiny, pickled_weights, two_directories, with_bad_crc
from tests.integration.kafka_helpers import free_port, run_sluice, running_worker, topics_for, unique, write_config
from tests.one_line import one_line_exit_2

SECOND_DIRECTORY = "zip readers would disagree on its entries (data prepended, or a second directory)"
NOT_ASCII = (
    "the entry 'tiny/models/weight_A\\u03a3.json' is not named in printable ASCII "
    "(torch's zip reader folds the case of ASCII letters only)"
)


@pytest.mark.parametrize("kind", ["second directory", "case folding"])
async def test_a_backfill_given_a_crafted_archive_exits_2_with_one_line_and_runs_nothing(kafka, tmp_path, kind):
    marker = tmp_path / "ran"
    clean = export_tiny(tmp_path / "tiny.pt2")
    if kind == "second directory":
        crafted = two_directories(clean, tmp_path / "crafted.pt2", pickled_weights(clean, marker))
    else:
        crafted = case_folded(clean, tmp_path / "crafted.pt2", marker)
    topics = topics_for(unique("crafted-backfill"))
    config = write_config(tmp_path, bootstrap=kafka, pipeline="crafted", partitions=1, **topics)
    await ensure_topics(kafka, list(topics.values()), create=True, partitions=1)
    result = await asyncio.to_thread(
        run_sluice,
        "--config", str(config), "backfill", "-m", str(crafted),
        "--sink", f"file:{tmp_path / 'out.jsonl'}", "--state-dir", str(tmp_path / "state"),
    )  # fmt: skip
    line = one_line_exit_2(result)
    if kind == "second directory":
        assert line.startswith(f"sluice backfill: refusing exported program {crafted}: its end record places the ")
        assert line.endswith(SECOND_DIRECTORY)
    else:
        assert line == f"sluice backfill: refusing exported program {crafted}: {NOT_ASCII}"
    assert not marker.exists(), "no code from the file ran"


def test_a_worker_whose_archive_is_damaged_stops_at_start_with_one_line(kafka, tmp_path):
    damaged = with_bad_crc(export_tiny(tmp_path / "tiny.pt2"), tmp_path / "damaged.pt2")
    config = write_config(
        tmp_path,
        bootstrap=kafka,
        pipeline="damaged",
        partitions=1,
        model=f'exported = "{damaged}"',
        inputs='[{ field = "features", shape = [3] }]',
        **topics_for(unique("damaged")),
    )
    result = run_sluice("--config", str(config), "worker", "--web-port", str(free_port()), timeout=90)
    line = one_line_exit_2(result)
    assert line.startswith(
        f"sluice worker: {config}: key 'pipelines.damaged.model': refusing exported program {damaged}: "
        "tiny/models/model.json fails its CRC-32 check (stored 0x"
    ), line


async def test_a_swap_to_a_crafted_or_damaged_archive_answers_422_and_runs_nothing(kafka, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    marker = tmp_path / "ran"
    clean = export_tiny(tmp_path / "tiny.pt2")
    crafted = two_directories(clean, models / "crafted.pt2", pickled_weights(clean, marker))
    folded = case_folded(clean, models / "folded.pt2", marker)
    damaged = with_bad_crc(clean, models / "damaged.pt2")
    config = write_config(
        tmp_path,
        bootstrap=kafka,
        pipeline="craft",
        partitions=1,
        extra=f'model_dirs = ["{models}"]',
        **topics_for(unique("craft")),
    )
    port, token = free_port(), "crafted-test-token"
    url = f"http://127.0.0.1:{port}/pipelines/craft/model"
    replies = []
    with running_worker(
        config, tmp_path / "worker.log", ready_text="partitions assigned: ", web_port=port,
        env={"SLUICE_ADMIN_TOKEN": token},
    ):  # fmt: skip
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
            for path in (crafted, folded, damaged):
                async with session.post(url, json={"exported": str(path), "version": "9"}) as response:
                    replies.append((response.status, (await response.json())["error"]))
            async with session.get(url) as response:
                serving = await response.json()
    assert not marker.exists(), "no code from the file ran"
    (crafted_status, crafted_error), folded_reply, (damaged_status, damaged_error) = replies
    assert crafted_status == 422
    assert crafted_error.startswith(
        f"not swapped, the old model keeps serving: refusing exported program {crafted.resolve()}: "
    )
    assert crafted_error.endswith(SECOND_DIRECTORY)
    assert folded_reply == (
        422,
        f"not swapped, the old model keeps serving: refusing exported program {folded.resolve()}: {NOT_ASCII}",
    )
    assert damaged_status == 422
    assert "tiny/models/model.json fails its CRC-32 check" in damaged_error
    assert (serving["pipeline"], serving["model"]) == ("craft", "fraud-mlp")
    assert serving["version"] != "9" and serving["decision"] is None, "nothing refused was decided for the group"
