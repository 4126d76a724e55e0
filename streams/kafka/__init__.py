"""The engine's Kafka adapters, apart from its pure core: the consumer-group source and its
commits, the bounded replay, the producer sink, and reading past batches that cannot be
decoded. Everything else in ``streams`` knows records, sources, sinks and progress only
through the protocols in ``streams.source`` and ``streams.flow.pipeline``, and imports no Kafka
client, so the core could be driven by another source.

May import: anything in ``streams`` and aiokafka; the rest of ``streams`` never imports this.
"""
