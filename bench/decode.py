"""Decoding alone, side by side in one run: microseconds per event for 4,096-event batches of
demo events, one thread, no Kafka, for the light model's schema (``features``), the
transformer's (``features`` and the three scalars sluice builds its history from), and a
nested input: the same events carrying a [16, 4] ``history`` array, as an upstream that
computed it could send them (the layout of nested inputs was decided here).

    .venv/bin/python -m bench.decode                 # results to bench/results/decode.{md,json}
    .venv/bin/python -m bench.decode --rounds 30

What is compared, on the same records:

- before: the fast path of streams/codecs/codec.py before msgspec: ``orjson.loads`` of every value
  (a dict of every field), then ``np.array`` over the batch for each input, float32, the
  finite check;
- now: ``streams.codecs.codec.decode``: the msgspec decoder of the schema's fields, ``history`` kept
  as raw text and decoded as one flat list per batch, ``np.fromiter``, and the checks that
  hand back what msgspec and orjson could read differently (see ``streams.codecs.fast_decode``);
- now without those checks of the text (UTF-8, numbers' range, nesting): what they cost;
- the careful path alone (orjson and numpy per event: what a batch of bad events costs);
- for the nested input, the layout not chosen: ``history`` typed as nested lists, which msgspec
  builds as a list per row, flattened by ``np.fromiter`` (and without the checks);
- the same events in Avro, as a producer with a schema registry writes them (the Confluent wire
  format: a zero byte, the schema id as 4 bytes big-endian, fastavro's ``schemaless_writer``; the
  numbers as ``double``, so each value reads back as its JSON twin's), through sluice's path:
  ``SchemaTranscoder.transcode`` (an in-process lookup, so no registry round trip; one event loop,
  fetches of ``--fetch`` events, the schema fetched once in the warm-up as a running worker keeps
  it) then ``codec.decode`` of the whole batch as JSON's;
- the ceiling of that path: fastavro's ``schemaless_reader`` alone on the same values (the Python
  objects, no JSON written, nothing decoded to tensors);
- the same events in Protobuf (``sluice produce --format protobuf``'s message, written as
  confluent-kafka's serializer frames it: the header, the message index, the message), through the
  same path, and Protobuf's compiled parser (upb) alone on them (messages, no JSON, no tensors).

Rounds are interleaved (each variant once per round) and the best round is reported with the
median, since a shared machine's speed varies from one second to the next.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import io
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import Annotated, Any

import fastavro
import msgspec
import numpy as np
import orjson

from app.demo_events import demo_events
from app.demo_formats import DEMO_AVRO, demo_proto_message
from models.synthetic import FEATURES, HISTORY_FIELDS, HISTORY_STEPS, SCALAR_FIELDS, account_histories, emitted
from streams.codecs import codec, fast_decode
from streams.codecs.codec import EventSchema, TensorField
from streams.codecs.schema_transcode import SchemaTranscoder, WriterSchema
from streams.codecs.wire_format import HEADER_BYTES
from streams.records import InputRecord, SourceRecord

RESULTS = Path(__file__).parent / "results"
FEATURES_FIELD = TensorField("features", (FEATURES,))
NESTED = "events carrying a [16, 4] history"
SCHEMAS = {
    "fraud-mlp": EventSchema("id", (FEATURES_FIELD,)),
    "fraud-transformer": EventSchema("id", (FEATURES_FIELD, *(TensorField(f, ()) for f in SCALAR_FIELDS))),
    NESTED: EventSchema("id", (FEATURES_FIELD, TensorField("history", (HISTORY_STEPS, HISTORY_FIELDS)))),
}
AVRO_SCHEMA_ID = 7
# The demo events' fields as a producer with a registry would declare them; numbers as double, so
# the values read back are the JSON events' (float32 would change the text of each number).
AVRO_DEMO: dict[str, Any] = DEMO_AVRO  # what `sluice produce --format avro` registers
AVRO_NESTED: dict[str, Any] = {
    **AVRO_DEMO,
    "fields": [
        *AVRO_DEMO["fields"],
        {"name": "history", "type": {"type": "array", "items": {"type": "array", "items": "double"}}},
    ],
}
JSON_ROW = "now: msgspec + np.fromiter (sluice decode)"
AVRO_ROW = "avro (registry wire format): sluice, fields picked as read + decode"
AVRO_JSON_ROW = "avro: sluice through JSON (each record written as JSON, then decoded)"
FASTAVRO_ROW = "avro: fastavro schemaless_reader alone (no JSON, no tensors)"
PROTO_ROW = "protobuf (registry wire format): sluice, fields picked as read + decode"
PROTO_JSON_ROW = "protobuf: sluice through JSON (each record written as JSON, then decoded)"
UPB_ROW = "protobuf: upb parse alone (no JSON, no tensors)"
PROTO_SCHEMA_ID = 8


def with_history(values: Sequence[bytes]) -> list[bytes]:
    """The events with each account's [16, 4] history as of that event added, rounded as the
    demo events round their numbers: the demo events' shape before sluice built the history."""
    docs = [orjson.loads(v) for v in values]
    accounts = np.array([d["account"] for d in docs])
    scalars = np.array([[d[f] for f in SCALAR_FIELDS] for d in docs], dtype=np.float32)
    histories = emitted(account_histories(accounts, scalars)).tolist()
    return [orjson.dumps({**d, "history": h}) for d, h in zip(docs, histories, strict=True)]


def orjson_np_array(records: Sequence[InputRecord], schema: EventSchema) -> Any:
    """The fast path before msgspec (streams/codecs/codec.py until this benchmark was added)."""
    docs = [orjson.loads(r.value) for r in records]  # type: ignore[arg-type]
    ids = [d[schema.id_field] for d in docs]
    inputs = []
    for spec in schema.inputs:
        inferred = np.array([d[spec.field] for d in docs])
        assert inferred.dtype.kind in "biuf" and inferred.shape == (len(docs), *spec.shape)
        with np.errstate(over="ignore"):
            inputs.append(np.asarray(inferred, dtype=np.float64).astype(np.float32))
    assert all(np.isfinite(a).all() for a in inputs)
    return ids, inputs


def nested_lists(schema: EventSchema) -> Callable[[Sequence[InputRecord]], Any]:
    """The layout not chosen for nested inputs: msgspec builds ``history`` as a list of lists
    (a list per row) and ``np.fromiter`` flattens it; no checks beyond msgspec's types."""
    fields: list[tuple[str, Any, Any]] = [("event_id", str | int, msgspec.field(name=schema.id_field))]
    for k, spec in enumerate(schema.inputs):
        kind: Any = float | bool
        for size in reversed(spec.shape):
            kind = Annotated[list[kind], msgspec.Meta(min_length=size, max_length=size)]
        fields.append((f"input{k}", kind, msgspec.field(name=spec.field)))
    decode = msgspec.json.Decoder(msgspec.defstruct("Nested", fields, gc=False)).decode

    def run(records: Sequence[InputRecord]) -> Any:
        objects = [decode(r.value) for r in records]  # type: ignore[arg-type]
        n = len(objects)
        inputs = []
        for k, spec in enumerate(schema.inputs):
            items: Any = map(attrgetter(f"input{k}"), objects)
            for _ in spec.shape:
                items = chain.from_iterable(items)
            flat = np.fromiter(items, np.float64, n * math.prod(spec.shape))
            inputs.append(flat.reshape(n, *spec.shape).astype(np.float32))
        return list(map(attrgetter("event_id"), objects)), inputs

    return run


def without_text_checks(records: Sequence[InputRecord], schema: EventSchema) -> Any:
    """``codec.decode`` without the checks of the values' text (UTF-8, numbers' range, depth)
    that keep its verdicts orjson's: what those checks cost. Not safe to use."""
    checks = fast_decode.plain_positions
    fast_decode.plain_positions = lambda values: list(range(len(values)))
    try:
        return codec.decode(records, schema)
    finally:
        fast_decode.plain_positions = checks


class Registry:
    """An in-process ``SchemaLookup``: the schemas by id, no network."""

    def __init__(self, schemas: dict[int, WriterSchema]) -> None:
        self.schemas = schemas

    async def fetch(self, schema_id: int) -> WriterSchema | None:
        return self.schemas.get(schema_id)


def avro_schema(schema: dict[str, Any]) -> WriterSchema:
    return WriterSchema("AVRO", json.dumps(schema))


def proto_values(values: Sequence[bytes]) -> list[bytes]:
    """The demo events as confluent-kafka's Protobuf serializer frames them (message index 0: one byte)."""
    message = demo_proto_message()
    header = b"\x00" + PROTO_SCHEMA_ID.to_bytes(4, "big") + b"\x00"
    return [header + message(**orjson.loads(value)).SerializeToString() for value in values]


def proto_schema() -> WriterSchema:
    return WriterSchema("PROTOBUF", base64.b64encode(demo_proto_message().DESCRIPTOR.file.serialized_pb).decode())


def upb_alone(values: Sequence[bytes]) -> Callable[[], list[Any]]:
    """The ceiling of the Protobuf path: the compiled parser on each value after its framing."""
    parse = demo_proto_message().FromString
    start = HEADER_BYTES + 1

    def run() -> list[Any]:
        return [parse(value[start:]) for value in values]

    return run


def avro_values(values: Sequence[bytes], schema: dict[str, Any]) -> list[bytes]:
    """The JSON values as a producer with a registry writes them: the wire format's header, then Avro."""
    parsed = fastavro.parse_schema(schema)
    header = b"\x00" + AVRO_SCHEMA_ID.to_bytes(4, "big")
    out = []
    for value in values:
        body = io.BytesIO()
        fastavro.schemaless_writer(body, parsed, orjson.loads(value))
        out.append(header + body.getvalue())
    return out


def through_transcoder(
    records: Sequence[SourceRecord], schema: EventSchema, transcoder: SchemaTranscoder, fetch: int
) -> Callable[[], Any]:
    """Sluice's path for Avro events: the transcoder per fetch of ``fetch`` records, as the
    transcoding source calls it, on one event loop; then the batch decoded as JSON events are."""
    loop = asyncio.new_event_loop()

    async def transcode() -> list[SourceRecord]:
        out: list[SourceRecord] = []
        for start in range(0, len(records), fetch):
            out += await transcoder.transcode(records[start : start + fetch])
        return out

    def run() -> Any:
        return codec.decode(loop.run_until_complete(transcode()), schema)

    return run


def fastavro_alone(values: Sequence[bytes], schema: dict[str, Any]) -> Callable[[], list[Any]]:
    """The ceiling of the Avro path: fastavro's compiled reader on each value after its header."""
    parsed = fastavro.parse_schema(schema)
    reader = fastavro.schemaless_reader

    def run() -> list[Any]:
        docs = []
        for value in values:
            body = io.BytesIO(value)
            body.seek(HEADER_BYTES)
            docs.append(reader(body, parsed, None))
        return docs

    return run


def measure(variants: dict[str, Callable[[], Any]], rounds: int, events: int) -> dict[str, dict[str, float]]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for run in variants.values():
        run()  # warm up: caches, the decoder's first build
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            for name, run in variants.items():
                started = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - started) / events * 1e6)
    finally:
        if enabled:
            gc.enable()
    return {name: {"best_us": min(t), "median_us": statistics.median(t)} for name, t in times.items()}


def run(events: int, rounds: int, fetch: int) -> dict[str, Any]:
    keys, demo = zip(*((e.key, e.value) for e in demo_events(events, seed=3)), strict=True)
    carrying = with_history(demo)
    avro = {False: avro_values(demo, AVRO_DEMO), True: avro_values(carrying, AVRO_NESTED)}
    protos = proto_values(demo)
    results: dict[str, Any] = {
        "started": datetime.now().isoformat(sep=" ", timespec="seconds"),
        "events_per_batch": events,
        "rounds": rounds,
        "value_bytes_mean": sum(map(len, demo)) / events,
        "nested_value_bytes_mean": sum(map(len, carrying)) / events,
        "avro_fetch_events": fetch,
        "avro_value_bytes_mean": sum(map(len, avro[False])) / events,
        "avro_nested_value_bytes_mean": sum(map(len, avro[True])) / events,
        "protobuf_value_bytes_mean": sum(map(len, protos)) / events,
        "models": {},
    }
    for model, schema in SCHEMAS.items():
        values = carrying if model == NESTED else demo
        records = [InputRecord("bench", 0, i, 0, k, v) for i, (k, v) in enumerate(zip(keys, values, strict=True))]
        reference = codec.decode(records, schema)
        before_ids, before_inputs = orjson_np_array(records, schema)
        assert reference.ids == before_ids and not reference.rejects
        assert all(a.tobytes() == b.tobytes() for a, b in zip(reference.inputs, before_inputs, strict=True))
        variants: dict[str, Callable[[], Any]] = {
            "before: orjson + np.array": partial(orjson_np_array, records, schema),
            "now: msgspec + np.fromiter (sluice decode)": partial(codec.decode, records, schema),
            "now, without the text checks (their cost; not safe)": partial(without_text_checks, records, schema),
            "careful path alone (orjson, numpy per event)": partial(codec._decode_careful, records, schema),
        }
        if any(len(spec.shape) > 1 for spec in schema.inputs):
            nested = nested_lists(schema)
            ids, inputs = nested(records)
            assert ids == reference.ids
            assert all(a.tobytes() == b.tobytes() for a, b in zip(inputs, reference.inputs, strict=True))
            variants["not chosen: history as nested lists, no guards"] = partial(nested, records)
        nested_values = model == NESTED
        written = AVRO_NESTED if nested_values else AVRO_DEMO
        wire = avro[nested_values]
        avro_records = [InputRecord("bench", 0, i, 0, k, v) for i, (k, v) in enumerate(zip(keys, wire, strict=True))]
        for row, fields in ((AVRO_ROW, schema), (AVRO_JSON_ROW, None)):
            registry = Registry({AVRO_SCHEMA_ID: avro_schema(written)})
            transcoder = SchemaTranscoder("avro", registry, pipeline="bench", fields=fields)
            via_sluice = through_transcoder(avro_records, schema, transcoder, fetch)
            from_avro = via_sluice()
            assert from_avro.ids == reference.ids and not from_avro.rejects
            assert all(a.tobytes() == b.tobytes() for a, b in zip(from_avro.inputs, reference.inputs, strict=True))
            variants[row] = via_sluice
        reader = fastavro_alone(wire, written)
        assert reader() == [orjson.loads(v) for v in values], "each Avro value reads back as its JSON twin"
        variants[FASTAVRO_ROW] = reader
        if not nested_values:  # the demo's Protobuf message has no history
            proto = [InputRecord("bench", 0, i, 0, k, v) for i, (k, v) in enumerate(zip(keys, protos, strict=True))]
            for row, fields in ((PROTO_ROW, schema), (PROTO_JSON_ROW, None)):
                registry = Registry({PROTO_SCHEMA_ID: proto_schema()})
                proto_transcoder = SchemaTranscoder("protobuf", registry, pipeline="b", fields=fields)
                via_proto = through_transcoder(proto, schema, proto_transcoder, fetch)
                from_proto = via_proto()
                assert from_proto.ids == reference.ids and not from_proto.rejects
                assert all(a.tobytes() == b.tobytes() for a, b in zip(from_proto.inputs, reference.inputs, strict=True))
                variants[row] = via_proto
            variants[UPB_ROW] = upb_alone(protos)
        results["models"][model] = measure(variants, rounds, events)
    return results


def write_report(results: dict[str, Any], out: Path) -> None:
    lines = [
        "# Decoding alone",
        "",
        f"Run {results['started']}: {results['events_per_batch']:,}-event batches of demo events "
        f"({results['value_bytes_mean']:.0f} bytes each), one thread, no Kafka; best and median of "
        f"{results['rounds']} interleaved rounds; {NESTED}: "
        f"{results['nested_value_bytes_mean']:.0f} bytes each. Reproduce: `.venv/bin/python -m bench.decode`.",
        "",
        f"Avro rows: the same events in the schema registry's wire format ({results['avro_value_bytes_mean']:.0f} "
        f"bytes each, {results['avro_nested_value_bytes_mean']:.0f} with the history; numbers as double), "
        f"transcoded by sluice in fetches of {results['avro_fetch_events']:,} on one event loop (schema already "
        "fetched, in-process lookup), then decoded as one batch as the JSON rows are; fastavro's reader alone "
        "is that path's ceiling. Protobuf rows: the same events as `sluice produce --format protobuf` writes them "
        f"({results['protobuf_value_bytes_mean']:.0f} bytes each), the same path; upb's parser alone is its ceiling.",
        "",
    ]
    for model, variants in results["models"].items():
        before = variants["before: orjson + np.array"]["best_us"]
        lines += [f"## {model}", "", "| decoder | us/event (best) | us/event (median) | vs before |"]
        lines += ["| --- | ---: | ---: | ---: |"]
        for name, t in variants.items():
            lines.append(f"| {name} | {t['best_us']:.2f} | {t['median_us']:.2f} | {before / t['best_us']:.2f}x |")
        lines.append("")
        if AVRO_ROW in variants:
            json_us, avro_us = variants[JSON_ROW]["best_us"], variants[AVRO_ROW]["best_us"]
            reader_us = variants[FASTAVRO_ROW]["best_us"]
            lines += [
                f"Avro through sluice costs {avro_us / json_us:.2f}x the JSON decode (best: {avro_us:.2f} against "
                f"{json_us:.2f} us/event): transcoding adds {avro_us - json_us:.2f} us/event, of which fastavro's "
                f"reader alone takes {reader_us:.2f}; through JSON (before fields were picked as read) it took "
                f"{variants[AVRO_JSON_ROW]['best_us']:.2f}.",
                "",
            ]
        if PROTO_ROW in variants:
            json_us, proto_us = variants[JSON_ROW]["best_us"], variants[PROTO_ROW]["best_us"]
            lines += [
                f"Protobuf through sluice costs {proto_us / json_us:.2f}x the JSON decode (best: {proto_us:.2f} "
                f"us/event); upb's parser alone takes {variants[UPB_ROW]['best_us']:.2f}; through JSON (before fields "
                f"were picked as read) it took {variants[PROTO_JSON_ROW]['best_us']:.2f}.",
                "",
            ]
    (out / "decode.md").write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--fetch", type=int, default=512, help="Avro events per call of the transcoder")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = run(args.events, args.rounds, args.fetch)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, args.out)
    print((args.out / "decode.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
