"""The engine: decode, batch, infer, encode, emit. Free of Faust; imports only ``models.protocol``.

- ``records``, ``source``, ``errors``, ``metrics``: what every part shares (the records and
  positions, the protocols of a source and its progress, the one error tree, the metrics);
- ``flow/``: the driver and its parts (batcher, dispatcher, pipeline, delivery, partitions);
- ``codecs/``: decoding events, encoding outputs and dead letters;
- ``features/``: per-key state and the features computed from it;
- ``backfill/``: the bounded replay's plan, checkpoints and the file sinks;
- ``kafka/``: the adapters to Kafka, the only part that imports a Kafka client;
- ``testing``: a source of given events and a sink that collects, for tests without a broker.
"""
