"""Flags of produce, watch and the root command that no value of theirs can crash or hang: one line, status 2."""

from __future__ import annotations

import pytest

from tests.one_line import one_line_exit_2
from tests.unit.test_cli import run_cli, unreachable_config

RATE_EXPECTED = "expected events per second >= 0 (0: as fast as possible)"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("produce", "-n", "-5"), "sluice produce: --count -5: expected a number of events >= 0"),
        (
            ("produce", "-r", "nan"),
            "sluice produce: --rate nan: expected events per second >= 0 (0: as fast as possible)",
        ),
        (
            ("produce", "-r", "-1"),
            "sluice produce: --rate -1.0: expected events per second >= 0 (0: as fast as possible)",
        ),
        (("watch", "--since", "inf"), "sluice watch: --since inf: expected a number >= 0"),
        (("watch", "--seconds", "nan"), "sluice watch: --seconds nan: expected a number >= 0"),
    ],
)
def test_a_flag_value_that_means_nothing_is_one_line_before_the_broker_is_asked(tmp_path, args, line):
    assert one_line_exit_2(run_cli("--config", str(unreachable_config(tmp_path)), *args)) == line


def test_config_without_a_path_is_one_line_and_status_2():
    assert one_line_exit_2(run_cli("worker", "--config")) == "sluice: --config needs a file path"
