"""Live, the shadows' processes are paused while the champion scores (``RoleRunners.shadows_paused``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.config.roles import ShadowConfig
from app.model_roles import RoleRunners
from models.process_runner import ProcessRunner
from models.spec import ModelSpec
from tests import process_scorers
from tests.fakes import SumRunner
from tests.unit.test_process_runner import _state, _wait_for_state

pytestmark = pytest.mark.skipif(
    not (hasattr(os, "pidfd_open") and Path("/proc/self/stat").exists()), reason="Linux pidfds and /proc"
)


def test_shadows_in_processes_are_paused_meanwhile_unless_their_config_says_not_to():
    paused = ProcessRunner(process_scorers.row_sums, what="shadow a")
    running = ProcessRunner(process_scorers.row_sums, what="shadow b")
    try:
        paused.start()
        running.start()
        runners = RoleRunners(
            shadows=[
                (ShadowConfig("a", ModelSpec(demo="fraud-mlp")), paused),
                (ShadowConfig("b", ModelSpec(demo="fraud-mlp"), pause_while_champion_scores=False), running),
                (ShadowConfig("c", ModelSpec(demo="fraud-mlp"), isolation="thread"), SumRunner()),
            ]
        )
        with runners.shadows_paused():
            _wait_for_state(paused._process.pid, stopped=True)
            assert _state(running._process.pid) != "T"
        _wait_for_state(paused._process.pid, stopped=False)
        runners.shadows = runners.shadows[1:]  # shadow a let go by a decision: no longer paused
        with runners.shadows_paused():
            assert _state(paused._process.pid) != "T"
    finally:
        paused.close()
        running.close()


def test_the_shadows_are_resumed_when_the_champion_raises():
    shadow = ProcessRunner(process_scorers.row_sums, what="shadow a")
    try:
        shadow.start()
        runners = RoleRunners(shadows=[(ShadowConfig("a", ModelSpec(demo="fraud-mlp")), shadow)])
        with pytest.raises(RuntimeError), runners.shadows_paused():
            _wait_for_state(shadow._process.pid, stopped=True)
            raise RuntimeError("the champion failed its batch")
        _wait_for_state(shadow._process.pid, stopped=False)
    finally:
        shadow.close()
