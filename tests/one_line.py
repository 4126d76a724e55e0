"""What every operator mistake must end with: status 2 and one line on stderr, never a traceback."""

from __future__ import annotations

import subprocess


def one_line_exit_2(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a command that ended on an operator mistake printed; the test fails otherwise."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]
