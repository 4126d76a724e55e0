from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import invoked_command, take_config_option, with_fast_loop
from streams.backfill.checkpoint import Checkpoint
from streams.backfill.replay_plan import ReplayPlan
from streams.records import Partition
from tests.one_line import one_line_exit_2


@pytest.mark.parametrize(
    ("argv", "rest", "path"),
    [
        (["worker", "-l", "info"], ["worker", "-l", "info"], None),
        (["--config", "a.toml", "worker"], ["worker"], "a.toml"),
        (["worker", "--config=b.toml", "-l", "info"], ["worker", "-l", "info"], "b.toml"),
    ],
)
def test_config_option_is_taken_wherever_it_appears(argv, rest, path):
    assert take_config_option(argv) == (rest, path)


def test_config_option_without_a_path_is_an_error(capsys):
    with pytest.raises(SystemExit) as raised:
        take_config_option(["worker", "--config"])
    assert raised.value.code == 2
    assert capsys.readouterr().err == "sluice: --config needs a file path\n"


def test_an_explicit_loop_choice_wins():
    assert with_fast_loop(["-L", "aio", "worker"]) == ["-L", "aio", "worker"]
    assert with_fast_loop(["worker"]) in (["--loop", "uvloop", "worker"], ["worker"])


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parents[2]
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_a_bad_config_stops_the_command_with_one_clear_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[app]\nid = "x"\ntorch_threads = -1\n')
    result = run_cli("--config", str(bad), "worker")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{bad}: key 'app.torch_threads' has value -1: expected an integer from 0 to 1,024" in result.stderr


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("web_port = 70000", "key 'app.web_port' has value 70000: expected an integer from 1 to 65,535"),
        (
            "topic_partitions = 2147483648",
            "key 'app.topic_partitions' has value 2147483648: expected an integer from 1 to 10,000 "
            "(Kafka creates no more in one request; create larger topics yourself)",
        ),
        (
            "torch_threads = 2147483648",
            "key 'app.torch_threads' has value 2147483648: expected an integer from 0 to 1,024",
        ),
        (r'web_bind = "\u0000"', "key 'app.web_bind' has value '\\x00': expected a string without control characters"),
        (
            'web_bind = "0.0.0.0:80"',
            "key 'app.web_bind' has value '0.0.0.0:80': expected an IP address (such as 127.0.0.1, 0.0.0.0 or ::) "
            "or a host name (letters, digits, '-' and '_', in dot-separated labels of at most 63)",
        ),
        ("stats_interval_s = inf", "key 'app.stats_interval_s' has value inf: expected a number from 0.1 to 86,400"),
        (
            'broker = "kafka://127.0.0.1:70000"',
            "key 'app.broker' has value 'kafka://127.0.0.1:70000': expected comma-separated kafka://HOST:PORT "
            "addresses (PORT from 1 to 65,535; HOST a host name, an IPv4 address or an IPv6 address in brackets)",
        ),
    ],
)
def test_a_config_value_past_its_range_stops_the_worker_with_one_line_and_status_2(tmp_path, line, says):
    # Each of these once passed the loader and failed later: Faust's traceback (web_port, broker),
    # the broker's refusal, torch, or a worker that started and never bound its web server.
    bad = tmp_path / "bad.toml"
    key = line.split(" ")[0]
    app_table = '[app]\nid = "x"\n' + ("" if key == "broker" else 'broker = "kafka://127.0.0.1:9"\n') + line + "\n"
    bad.write_text(app_table + PIPELINE)
    result = run_cli("--config", str(bad), "worker")
    assert one_line_exit_2(result) == f"sluice worker: {bad}: {says}"


def test_an_unloadable_model_stops_the_worker_before_it_starts(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(
        """
[pipelines.p]
input_topics = ["in"]
output_topic = "out"
dead_letter_topic = "dlq"
[pipelines.p.model]
class = "models.demo:FraudMLP"
state_dict = "missing-weights.pt"
[pipelines.p.features]
inputs = [{ field = "features", shape = [32] }]
"""
    )
    result = run_cli("--config", str(config), "worker")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "key 'pipelines.p.model'" in result.stderr
    assert (
        "weights file for models.demo:FraudMLP" in result.stderr
        and "missing-weights.pt does not exist" in result.stderr
    )


def test_an_unreachable_broker_stops_the_worker_with_the_address_and_what_to_check(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "c.toml"
    config.write_text(f'[app]\nbroker = "kafka://127.0.0.1:{port}"\n' + PIPELINE)
    result = run_cli("--config", str(config), "worker")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"no Kafka broker answered at 127.0.0.1:{port}" in result.stderr
    assert "docker/kafka-local status" in result.stderr


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["worker", "-l", "info"], "worker"),
        (["-A", "app.main", "worker"], "worker"),
        (["--loop", "uvloop", "--datadir", "worker", "produce"], "produce"),
        (["-l", "info", "backfill", "--pipeline", "worker"], "backfill"),
        (["--help"], None),
    ],
)
def test_the_invoked_command_is_found_past_options_and_their_values(argv, command):
    assert invoked_command(argv) == command


PIPELINE = """
[pipelines.p]
input_topics = ["in"]
output_topic = "out"
dead_letter_topic = "dlq"
[pipelines.p.model]
demo = "fraud-mlp"
[pipelines.p.features]
inputs = [{ field = "features", shape = [32] }]
"""


def unreachable_config(tmp_path: Path) -> Path:
    """A valid config whose broker nothing answers: operator mistakes must be caught before it is reached."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "c.toml"
    config.write_text(
        f"""
[app]
broker = "kafka://127.0.0.1:{port}"
[pipelines.fraud]
input_topics = ["in"]
output_topic = "out"
dead_letter_topic = "dlq"
[pipelines.fraud.model]
demo = "fraud-mlp"
[pipelines.fraud.features]
inputs = [{{ field = "features", shape = [32] }}]
[pipelines.audit]
input_topics = ["in"]
output_topic = "audit-out"
dead_letter_topic = "audit-dlq"
[pipelines.audit.model]
demo = "fraud-mlp"
[pipelines.audit.features]
inputs = [{{ field = "features", shape = [32] }}]
"""
    )
    return config


@pytest.mark.parametrize("sink", [[], ["--sink", "file:scores.jsonl"]])
def test_a_backfill_of_a_pipeline_that_does_not_exist_names_the_ones_that_do(tmp_path, sink):
    config = unreachable_config(tmp_path)
    result = run_cli("--config", str(config), "backfill", "-p", "nosuch", *sink, "--state-dir", str(tmp_path / "s"))
    line = one_line_exit_2(result)
    assert line == f"sluice backfill: --pipeline 'nosuch': no such pipeline in {config}; pipelines: fraud, audit"


@pytest.mark.parametrize(
    ("sink", "says"),
    [
        ("file:scores.csv", "the file name must end in .jsonl or .parquet"),
        ("kafka:", "'' is not a Kafka topic name"),
        ("s3://bucket/x", "expected kafka:TOPIC, file:PATH.jsonl or file:PATH.parquet"),
    ],
)
def test_a_backfill_to_a_sink_it_cannot_write_says_what_it_takes(tmp_path, sink, says):
    config = unreachable_config(tmp_path)
    result = run_cli("--config", str(config), "backfill", "--sink", sink, "--state-dir", str(tmp_path / "s"))
    line = one_line_exit_2(result)
    assert line.startswith(f"sluice backfill: --sink {sink!r}: ")
    assert says in line


@pytest.mark.parametrize("run_id", ["../../x", "a/b"])
def test_a_run_id_that_is_not_a_plain_name_is_refused_and_nothing_is_written(tmp_path, run_id):
    config = unreachable_config(tmp_path)
    state = tmp_path / "deep" / "er" / "state"
    result = run_cli("--config", str(config), "backfill", "--run-id", run_id, "--state-dir", str(state))
    assert "is not a plain name: use 1 to 100 letters, digits" in one_line_exit_2(result)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["c.toml"]


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("pipeline", "nosuch", "pipeline 'nosuch': no such pipeline in"),
        ("sink", "file:/tmp/x.csv", "sink 'file:/tmp/x.csv': /tmp/x.csv: the file name must end in .jsonl or .parquet"),
        ("model", "bogus", "model: --model 'bogus': expected a demo model"),
    ],
)
def test_a_checkpoint_naming_what_the_command_line_refuses_is_refused_on_resume(tmp_path, key, value, says):
    config = unreachable_config(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    run = {"id": "r1", "pipeline": "fraud", "model": None, "sink": "kafka:out", "part": [1, 1], key: value}
    tp = Partition("in", 0)
    Checkpoint(state / "r1.part1of1.json", run, ReplayPlan({tp: 0}, {tp: 5})).save()
    result = run_cli("--config", str(config), "backfill", "--resume", "r1", "--state-dir", str(state))
    assert one_line_exit_2(result).startswith(f"sluice backfill: checkpoint {state / 'r1.part1of1.json'}: {says}")


def test_resume_refuses_options_that_would_change_the_run(tmp_path):
    config = unreachable_config(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    run = {"id": "r1", "pipeline": "fraud", "model": None, "sink": "kafka:out", "part": [1, 1]}
    tp = Partition("in", 0)
    Checkpoint(state / "r1.part1of1.json", run, ReplayPlan({tp: 0}, {tp: 5})).save()
    result = run_cli(
        "--config", str(config), "backfill", "--resume", "r1", "--sink", "kafka:x", "--state-dir", str(state)
    )
    assert one_line_exit_2(result) == (
        "sluice backfill: --sink 'kafka:x': run r1 was started with 'kafka:out', "
        "and --resume continues it as it started: drop --sink"
    )


TIMESTAMP_EXPECTED = (
    "expected milliseconds since the epoch (ASCII digits, 0 to 253402300799999) or an ISO 8601 time "
    "from 1970-01-01 to 9999-12-31 (local time unless it gives an offset)"
)


@pytest.mark.parametrize(
    "value",
    [
        "\u00b2",  # str.isdigit() says yes, int() says no
        "\u0661\u0662",  # Arabic-Indic digits: int() reads them, Kafka never should
        "99999999999999999999",
        "253402300800000",
        "1969-12-31T23:59:59+00:00",  # -1 ms: Kafka's "latest offset", a run that replays nothing
        "0001-01-01T00:00:00+00:00",
        "2026-13-01",
        "-5",
        "",
    ],
)
def test_a_backfill_from_a_timestamp_out_of_range_or_not_a_number_is_one_line(tmp_path, value):
    config = unreachable_config(tmp_path)
    result = run_cli("--config", str(config), "backfill", "--from-timestamp", value, "--state-dir", str(tmp_path / "s"))
    assert one_line_exit_2(result) == f"sluice backfill: --from-timestamp {value!r}: {TIMESTAMP_EXPECTED}"


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        ("0", 0),
        ("1764288000123", 1_764_288_000_123),
        ("253402300799999", 253_402_300_799_999),
        ("2026-11-28T00:00:00.123+00:00", 1_795_824_000_123),
        ("9999-12-31T23:59:59.999+00:00", 253_402_300_799_999),
    ],
)
def test_a_timestamp_is_read_to_the_millisecond(value, ms):
    from app.commands.backfill import parse_timestamp

    assert parse_timestamp(value) == ms


@pytest.mark.parametrize("value", ["1/" + "9" * 300, "1/10001", "\u0661/\u0661", "1/1/1", " 1/1"])
def test_a_part_that_names_no_file_a_run_could_have_is_one_line(tmp_path, value):
    config = unreachable_config(tmp_path)
    result = run_cli("--config", str(config), "backfill", "--part", value, "--state-dir", str(tmp_path / "s"))
    assert one_line_exit_2(result) == (
        f"sluice backfill: --part {value!r}: expected K/N (ASCII digits), 1 <= K <= N <= 10,000, e.g. 1/3"
    )


def test_resuming_a_checkpoint_nested_too_deeply_is_one_line(tmp_path):
    config = unreachable_config(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    (state / "r1.part1of1.json").write_bytes(b"[" * 200_000)
    result = run_cli("--config", str(config), "backfill", "--resume", "r1", "--state-dir", str(state))
    assert one_line_exit_2(result) == (
        f"sluice backfill: checkpoint {state / 'r1.part1of1.json'}: not readable as JSON (nested too deeply)"
    )


# Imported, it leaves a file behind: the proof that a resume ran code a checkpoint named.
PLANTED = """
import pathlib
pathlib.Path({marker!r}).write_text("imported")
import torch
class Net(torch.nn.Module):
    def forward(self, x):
        return x.sum(dim=1, keepdim=True)
"""


def planted_run(tmp_path: Path, model: str) -> tuple[Path, Path, dict[str, str]]:
    """A checkpoint whose run names ``model``, a module that marks its import, and the env to find it."""
    marker = tmp_path / "imported"
    (tmp_path / "planted_model.py").write_text(PLANTED.format(marker=str(marker)))
    state = tmp_path / "state"
    state.mkdir()
    run = {"id": "r1", "pipeline": "fraud", "model": model, "sink": "kafka:out", "part": [1, 1]}
    tp = Partition("in", 0)
    Checkpoint(state / "r1.part1of1.json", run, ReplayPlan({tp: 0}, {tp: 5})).save()
    return state, marker, {"PYTHONPATH": str(tmp_path)}


@pytest.mark.parametrize("model", ["planted_model:Net=w.pt", "elsewhere/model.pt2"])
def test_resume_loads_no_model_file_or_module_only_the_checkpoint_names(tmp_path, model):
    config = unreachable_config(tmp_path)
    state, marker, env = planted_run(tmp_path, model)
    result = run_cli("--config", str(config), "backfill", "--resume", "r1", "--state-dir", str(state), env=env)
    assert one_line_exit_2(result) == (
        f"sluice backfill: checkpoint {state / 'r1.part1of1.json'}: model: run r1 was started with --model "
        f"{model!r}; a resume loads a model file or module only when the command line names it: "
        f"repeat --model {model!r} if it is the model you mean to run"
    )
    assert not marker.exists()


def test_resume_with_another_model_than_the_run_was_started_with_says_which_to_give(tmp_path):
    config = unreachable_config(tmp_path)
    state, marker, env = planted_run(tmp_path, "planted_model:Net=w.pt")
    result = run_cli(
        "--config", str(config), "backfill", "--resume", "r1", "-m", "fraud-mlp", "--state-dir", str(state), env=env
    )
    assert one_line_exit_2(result) == (
        "sluice backfill: --model 'fraud-mlp': run r1 was started with 'planted_model:Net=w.pt', and --resume "
        "continues it as it started: give --model 'planted_model:Net=w.pt' (a resume loads a model file or module "
        "only when the command line names it)"
    )
    assert not marker.exists()


@pytest.mark.parametrize(("recorded", "given"), [("planted_model:Net=w.pt", ["-m", "planted_model:Net=w.pt"])])
def test_resume_with_the_same_model_on_the_command_line_goes_on(tmp_path, recorded, given):
    # Past the model's check, the next thing a resume does is reach the broker (none answers here).
    config = unreachable_config(tmp_path)
    state, _marker, env = planted_run(tmp_path, recorded)
    result = run_cli("--config", str(config), "backfill", "--resume", "r1", *given, "--state-dir", str(state), env=env)
    assert "no Kafka broker answered" in one_line_exit_2(result)


def test_resume_of_a_run_started_with_a_demo_model_needs_no_model_on_the_command_line(tmp_path):
    config = unreachable_config(tmp_path)
    state, _marker, env = planted_run(tmp_path, "fraud-transformer")
    result = run_cli("--config", str(config), "backfill", "--resume", "r1", "--state-dir", str(state), env=env)
    assert "no Kafka broker answered" in one_line_exit_2(result)


# 8,000 bytes of a file the operator owns, which a planted checkpoint names as its run's sink.
VICTIM = (b'{"label": 1}' + b" " * 67 + b"\n") * 100


def planted_file_run(tmp_path: Path, lengths: dict[str, int] | None = None) -> tuple[Path, Path]:
    """A checkpoint whose run "wrote" the victim's ``training-set.jsonl`` (and its dead letters)."""
    victim = tmp_path / "victim" / "training-set.jsonl"
    victim.parent.mkdir()
    victim.write_bytes(VICTIM)
    victim.with_name("training-set.dead-letters.jsonl").write_bytes(b"")
    state = tmp_path / "state"
    state.mkdir()
    run = {"id": "r5", "pipeline": "fraud", "model": None, "sink": f"file:{victim}", "part": [1, 1]}
    tp = Partition("in", 0)
    counted = {"training-set.jsonl": 10, "training-set.dead-letters.jsonl": 0} if lengths is None else lengths
    sink = {"lengths": counted, "parts": []}
    Checkpoint(state / "r5.part1of1.json", run, ReplayPlan({tp: 0}, {tp: 5}), sink=sink).save()
    return state, victim


def test_resume_writes_to_no_file_only_the_checkpoint_names(tmp_path):
    config = unreachable_config(tmp_path)
    state, victim = planted_file_run(tmp_path)
    result = run_cli("--config", str(config), "backfill", "--resume", "r5", "--state-dir", str(state))
    assert one_line_exit_2(result) == (
        f"sluice backfill: checkpoint {state / 'r5.part1of1.json'}: sink: run r5 was started with --sink "
        f"'file:{victim}'; a resume writes to a file sink, and cuts it back to the checkpoint, only when the "
        f"command line names it: repeat --sink 'file:{victim}' if it is the sink you mean to write to"
    )
    assert victim.read_bytes() == VICTIM


def test_resume_with_another_file_sink_than_the_run_was_started_with_says_which_to_give(tmp_path):
    config = unreachable_config(tmp_path)
    state, victim = planted_file_run(tmp_path)
    other = tmp_path / "other.jsonl"
    result = run_cli(
        "--config", str(config), "backfill", "--resume", "r5", "--sink", f"file:{other}", "--state-dir", str(state)
    )
    assert one_line_exit_2(result) == (
        f"sluice backfill: --sink 'file:{other}': run r5 was started with 'file:{victim}', and --resume continues "
        f"it as it started: give --sink 'file:{victim}' (a resume writes to a file sink, and cuts it back to the "
        "checkpoint, only when the command line names it)"
    )
    assert victim.read_bytes() == VICTIM
    assert not other.exists()


@pytest.mark.parametrize(
    ("lengths", "says"),
    [
        (
            {"training-set.jsonl": 10},
            "the checkpoint does not record training-set.dead-letters.jsonl; start a new run",
        ),
        (
            {"training-set.jsonl": 10, "training-set.dead-letters.jsonl": 3},
            "{dead} holds 0 bytes but the checkpoint counts 3: it was changed since; start a new run",
        ),
        (
            {"training-set.jsonl": 10, "training-set.dead-letters.jsonl": 0, "../../etc/passwd": 0},
            "the checkpoint records '../../etc/passwd', which sink {victim} does not write "
            "(training-set.dead-letters.jsonl, training-set.jsonl); start a new run",
        ),
    ],
)
def test_resume_checks_every_file_its_checkpoint_names_before_it_touches_any(tmp_path, lengths, says):
    config = unreachable_config(tmp_path)
    state, victim = planted_file_run(tmp_path, lengths)
    dead = victim.with_name("training-set.dead-letters.jsonl")
    result = run_cli(
        "--config", str(config), "backfill", "--resume", "r5", "--sink", f"file:{victim}", "--state-dir", str(state)
    )
    assert one_line_exit_2(result) == (
        f"sluice backfill: checkpoint {state / 'r5.part1of1.json'}: key 'sink': "
        + says.format(dead=dead, victim=victim)
    )
    assert victim.read_bytes() == VICTIM


def test_resume_of_a_dead_letters_file_gone_is_refused_before_the_broker_is_reached(tmp_path):
    config = unreachable_config(tmp_path)
    state, victim = planted_file_run(tmp_path)
    dead = victim.with_name("training-set.dead-letters.jsonl")
    dead.unlink()
    result = run_cli(
        "--config", str(config), "backfill", "--resume", "r5", "--sink", f"file:{victim}", "--state-dir", str(state)
    )
    assert one_line_exit_2(result) == (
        f"sluice backfill: checkpoint {state / 'r5.part1of1.json'}: key 'sink': {dead} is gone but the checkpoint "
        "counts 0 bytes of it; start a new run"
    )
    assert victim.read_bytes() == VICTIM
    assert not dead.exists()


def test_resume_with_the_same_file_sink_on_the_command_line_goes_on(tmp_path):
    # Past the sink's checks, the next thing a resume does is reach the broker (none answers here):
    # nothing is cut before the run can start.
    config = unreachable_config(tmp_path)
    state, victim = planted_file_run(tmp_path)
    result = run_cli(
        "--config", str(config), "backfill", "--resume", "r5", "--sink", f"file:{victim}", "--state-dir", str(state)
    )
    assert "no Kafka broker answered" in one_line_exit_2(result)
    assert victim.read_bytes() == VICTIM


def test_resume_of_a_file_sink_whose_checkpoint_records_no_files_is_refused(tmp_path):
    config = unreachable_config(tmp_path)
    state, victim = planted_file_run(tmp_path)
    path = state / "r5.part1of1.json"
    checkpoint = Checkpoint.load(path)
    checkpoint.sink = None
    checkpoint.save()
    result = run_cli(
        "--config", str(config), "backfill", "--resume", "r5", "--sink", f"file:{victim}", "--state-dir", str(state)
    )
    assert one_line_exit_2(result) == (
        f"sluice backfill: checkpoint {path}: key 'sink' has value None: expected the lengths of the files "
        f"sink file:{victim} writes"
    )
    assert victim.read_bytes() == VICTIM


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["worker", "--web-port", "70000"],
            "sluice worker: Invalid value for '--web-port' / '-p': 70000 is not in the range 1<=x<=65535. "
            "(see sluice worker --help)",
        ),
        (
            ["worker", "--web-port", "\u00b2"],
            "sluice worker: Invalid value for '--web-port' / '-p': '\u00b2' is not a valid range[1-65535]. "
            "(see sluice worker --help)",
        ),
        (["nosuch"], "sluice: No such command 'nosuch'. (see sluice --help)"),
        (
            ["backfill", "--no-such-flag"],
            "sluice backfill: No such option: --no-such-flag (see sluice backfill --help)",
        ),
    ],
)
def test_a_command_line_click_refuses_is_one_line_and_status_2(tmp_path, args, line):
    result = run_cli("--config", str(unreachable_config(tmp_path)), *args)
    assert one_line_exit_2(result) == line
