"""Every numeric key has its real range, and strings that name a host are host names.

A value the loader accepted used to crash later, far from the file: ``web_port = 70000``
(Faust's own check, a traceback), ``topic_partitions = 2147483648`` (the broker's request),
``torch_threads = 2147483648`` (torch), ``web_bind = "\\u0000"`` (a worker that started and
bound nothing). Each is now one line naming the file, the key, the value and the range.
"""

from __future__ import annotations

import pytest

from app.config import load_config
from streams.errors import ConfigError
from tests.unit.test_config import GOOD, error_for, write

APP = 'id = "t"'
PIPELINE = 'dead_letter_topic = "dlq"'
STATE = """
[pipelines.p.state]
ttl_s = 60
store = "rocksdb"
{line}
[pipelines.p.state.features]
gap = {{ kind = "since_previous" }}
"""


def with_line(where: str, line: str) -> str:
    if where == "state":
        return GOOD + STATE.format(line=line)
    if where == "exactly_once":
        return GOOD.replace(PIPELINE, f'{PIPELINE}\ndelivery = "exactly_once"\n{line}')
    anchor = APP if where == "app" else PIPELINE
    return GOOD.replace(anchor, f"{anchor}\n{line}")


# (where, key, minimum, maximum, what the error says is expected)
INTEGERS = [
    ("app", "topic_partitions", 1, 10_000, "an integer from 1 to 10,000"),
    ("app", "torch_threads", 0, 1024, "an integer from 0 to 1,024"),
    ("app", "web_port", 1, 65535, "an integer from 1 to 65,535"),
    ("pipeline", "max_batch_size", 1, 65536, "an integer from 1 to 65,536"),
    ("pipeline", "poll_ms", 1, 60_000, "an integer from 1 to 60,000"),
    ("pipeline", "max_payload_bytes", 1, 2**31 - 1, "an integer from 1 to 2,147,483,647"),
    ("pipeline", "dead_letter_copy_bytes", 256, 536_866_815, "an integer from 256 to 536,866,815"),
    ("state", "cache_keys", 1, 1_000_000_000, "an integer from 1 to 1,000,000,000"),
]


def prefix_of(where: str) -> str:
    return {"app": "app", "state": "pipelines.p.state"}.get(where, "pipelines.p")


@pytest.mark.parametrize(("where", "key", "minimum", "maximum", "expected"), INTEGERS)
def test_every_integer_key_takes_its_whole_range(tmp_path, where, key, minimum, maximum, expected):
    # GOOD's input of 32 numbers needs events of 65 bytes at least.
    for value in (max(minimum, 65) if key == "max_payload_bytes" else minimum, maximum):
        load_config(write(tmp_path, with_line(where, f"{key} = {value}")), environ={})


@pytest.mark.parametrize(("where", "key", "minimum", "maximum", "expected"), INTEGERS)
def test_every_integer_key_refuses_what_is_past_its_range_in_one_line(tmp_path, where, key, minimum, maximum, expected):
    prefix = prefix_of(where)
    for value in sorted({minimum - 1, maximum + 1, 2**31, 2**63 - 1, 10**30, -(2**63)}):
        if minimum <= value <= maximum:
            continue
        message = error_for(tmp_path, with_line(where, f"{key} = {value}"))
        assert f"key '{prefix}.{key}' has value {value}: expected {expected}" in message
        assert "\n" not in message


# (where, key, accepted, refused, what the error says is expected)
NUMBERS = [
    (
        "app",
        "stats_interval_s",
        (0.1, 86_400),
        ("0", "0.05", "86401", "inf", "nan", "1e308"),
        "a number from 0.1 to 86,400",
    ),
    (
        "pipeline",
        "commit_interval_ms",
        (1, 3_600_000),
        ("0", "0.5", "3600001", "inf", "nan", "-inf"),
        "a number from 1 to 3,600,000",
    ),
    (
        "exactly_once",
        "transaction_interval_ms",
        (1, 30_000),
        ("0", "30001", "inf", "nan", "100000000000000000000"),
        "a number from 1 to 30,000",
    ),
    # An infinite budget or fill wait is allowed (no deadline; wait as long as an idle fetch does).
    ("pipeline", "latency_budget_ms", (0.001, "inf", 10**18), ("0", "-1", "nan", "-inf", str(10**400)), "a number > 0"),
    ("pipeline", "max_fill_wait_ms", (0, "inf"), ("-1", "nan", "-inf", str(10**400)), "a number >= 0"),
]


@pytest.mark.parametrize(("where", "key", "accepted", "refused", "expected"), NUMBERS)
def test_every_number_key_has_its_range(tmp_path, where, key, accepted, refused, expected):
    prefix = prefix_of(where)
    for value in accepted:
        load_config(write(tmp_path, with_line(where, f"{key} = {value}")), environ={})
    for text in refused:
        message = error_for(tmp_path, with_line(where, f"{key} = {text}"))
        assert f"key '{prefix}.{key}' has value " in message and f": expected {expected}" in message
        assert "\n" not in message


def test_a_shape_holds_no_more_numbers_than_an_event_of_max_payload_bytes_can(tmp_path):
    # The smallest JSON array of n numbers, "[0,0,...]", is 2n + 1 bytes.
    fits = GOOD.replace("shape = [32]", "shape = [4, 8]").replace(PIPELINE, f"{PIPELINE}\nmax_payload_bytes = 65")
    assert load_config(write(tmp_path, fits), environ={}).pipeline("p").inputs[0].shape == (4, 8)
    for shape in ("[2147483648]", "[65536, 65536]", "[9223372036854775807]"):
        message = error_for(tmp_path, GOOD.replace("shape = [32]", f"shape = {shape}"))
        assert (
            f"key 'pipelines.p.features.inputs[0].shape' has value {shape}: expected a list of "
            "positive integers, e.g. [32], of at most 524,287 numbers in all (an event of max_payload_bytes "
            "1,048,576 holds no more)"
        ) in message
    message = error_for(tmp_path, fits.replace("max_payload_bytes = 65", "max_payload_bytes = 64"))
    assert "of at most 31 numbers in all (an event of max_payload_bytes 64 holds no more)" in message


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "0.0.0.0", "::", "::1", "fe80::1%eth0", "localhost", "worker-1.example.com", "my_worker"]
)
def test_web_bind_takes_an_ip_address_or_a_host_name(tmp_path, host):
    config = load_config(write(tmp_path, with_line("app", f'web_bind = "{host}"')), environ={})
    assert config.app.web_bind == host


@pytest.mark.parametrize(
    "toml",
    [
        r'"\u0000"',
        r'"local\u0000host"',
        r'"localhost\n"',
        '"two words"',
        '"-leading.dash"',
        '"trailing-.dash"',
        '"a..b"',
        '"[::1]"',
        '"http://0.0.0.0"',
        '"127.0.0.1:8080"',
        '"' + "a" * 64 + '.com"',
        '"' + ".".join(["abcdefgh"] * 30) + '"',
        '"ex\u00e4mple.com"',
    ],
)
def test_web_bind_refuses_what_is_not_a_host_in_one_line(tmp_path, toml):
    message = error_for(tmp_path, with_line("app", f"web_bind = {toml}"))
    assert "key 'app.web_bind' has value " in message
    assert message.endswith(
        "expected an IP address (such as 127.0.0.1, 0.0.0.0 or ::) or a host name (letters, digits, '-' "
        "and '_', in dot-separated labels of at most 63)"
    ) or message.endswith("expected a string without control characters")
    assert "\n" not in message


@pytest.mark.parametrize(
    "broker",
    [
        "kafka://127.0.0.1:9092",
        "127.0.0.1:9092",
        "kafka://b1:9092,kafka://b2:9093",
        "kafka://b1:9092,b2:9093",
        "kafka://[::1]:9092",
        "kafka://localhost",
        "aiokafka://broker.example.com:65535",
    ],
)
def test_a_broker_list_of_hosts_and_ports_loads(tmp_path, broker):
    config = load_config(write(tmp_path, GOOD.replace("kafka://127.0.0.1:9092", broker)), environ={})
    assert config.app.broker.endswith(broker)


@pytest.mark.parametrize(
    "broker",
    [
        "kafka://127.0.0.1:70000",
        "kafka://127.0.0.1:0",
        "kafka://127.0.0.1:-1",
        "kafka://127.0.0.1:99999999999999999999",
        "kafka://127.0.0.1:\uff19\uff10\uff19\uff12",  # fullwidth digits
        "kafka://127.0.0.1:",
        "kafka://:9092",
        "kafka://b1:9092,,kafka://b2:9092",
        "kafka://b1:9092;kafka://b2:9092",
        "kafka://bad host:9092",
        "http://127.0.0.1:9092",
        "kafka://::1:9092",
        "kafka://user@host:9092",
        "kafka://host:9092/path",
    ],
)
def test_a_broker_that_is_not_a_list_of_hosts_and_ports_is_refused_in_one_line(tmp_path, broker):
    message = error_for(tmp_path, GOOD.replace("kafka://127.0.0.1:9092", broker))
    assert f"key 'app.broker' has value {broker!r}: expected " in message
    assert "comma-separated kafka://HOST:PORT addresses (PORT from 1 to 65,535; HOST a host name" in message


def test_a_bad_broker_from_the_environment_names_the_variable(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(ConfigError, match=r"\$SLUICE_BROKER \(which overrides key 'app.broker'\) has value") as info:
        load_config(path, environ={"SLUICE_BROKER": "127.0.0.1:70000"})
    assert str(path) in str(info.value)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:127"])
def test_a_device_loads(tmp_path, device):
    assert load_config(write(tmp_path, with_line("app", f'device = "{device}"')), environ={}).app.device == device


@pytest.mark.parametrize("device", ["cudaX", "cuda:", "cuda:abc", "cuda:128", "cuda:99999999999999999999", "cuda:-1"])
def test_a_device_index_torch_cannot_hold_is_refused(tmp_path, device):
    # torch reads "cuda:128" as cuda:-128, and fails on "cuda:abc" only when the model is loaded.
    message = error_for(tmp_path, with_line("app", f'device = "{device}"'))
    assert f"key 'app.device' has value '{device}': expected 'auto', 'cpu', 'cuda' or 'cuda:N' (N from 0 to 127)" in (
        message
    )


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('id = "t"', r'id = "t\u0000"', "app.id"),
        ('id = "t"', 'id = "t"\n' + r'admin_token_env = "TOKEN\r"', "app.admin_token_env"),
        (PIPELINE, PIPELINE + "\n" + r'group_id = "g\u001b[31m"', "pipelines.p.group_id"),
        ('demo = "fraud-mlp"', 'demo = "fraud-mlp"\n' + r'version = "v1\u0085"', "pipelines.p.model.version"),
        ('"features", shape', r'"feat\u0000ures", shape', "pipelines.p.features.inputs[0].field"),
    ],
)
def test_no_string_in_the_config_holds_control_characters(tmp_path, old, new, key):
    message = error_for(tmp_path, GOOD.replace(old, new))
    assert f"key '{key}' has value " in message and "expected a string without control characters" in message
    assert "\n" not in message


def test_a_model_path_with_a_nul_is_refused_at_load_not_when_opened(tmp_path):
    message = error_for(tmp_path, GOOD.replace('demo = "fraud-mlp"', r'exported = "m\u0000.pt2"'))
    assert "key 'pipelines.p.model.exported' has value 'm\\x00.pt2': expected a string without control characters" in (
        message
    )


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "sluice.toml"
    path.write_bytes(GOOD.encode().replace(b'id = "t"', b'id = "t\xff"'))
    with pytest.raises(ConfigError, match="not UTF-8 text") as info:
        load_config(path, environ={})
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_config_path_that_is_a_folder_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=f"config file {tmp_path} cannot be read: Is a directory"):
        load_config(tmp_path, environ={})


def test_a_deeply_nested_config_is_one_line_not_a_recursion_error(tmp_path):
    message = error_for(tmp_path, GOOD + "junk = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert "not valid TOML: nested too deeply" in message
