from __future__ import annotations

from app.progress_bar import ProgressBar


def test_off_a_terminal_progress_prints_plain_lines_and_always_a_final_one(capsys):
    progress = ProgressBar(10, "job", every_s=0.0)
    progress.update(4)
    progress.finish(10)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("job: 4/10 (40%,")
    assert "ETA" in lines[0]
    assert lines[-1].startswith("job: 10/10 (") and " in " in lines[-1]


def test_lines_are_spaced_out(capsys):
    progress = ProgressBar(10, "job", every_s=3600)
    for done in range(10):
        progress.update(done)
    assert capsys.readouterr().err == ""
