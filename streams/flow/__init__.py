"""The driver and its parts: one loop that runs a pipeline, live or backfill.

``driver`` feeds a source's records (``feeder``) to the ``batcher``, which asks the
``cost_model`` how many fit the latency budget; ``dispatcher`` scores each batch through the
``pipeline`` (decode, the per-key features of ``stateful_inputs``, the model, encode) and,
when the model raises, ``isolation`` finds the events that cause it; ``delivery`` owns sending
outputs; ``acknowledger`` moves progress once they are acknowledged; ``live_stats`` is the
worker's log line. ``roles`` are the models that serve (champion, ``canary``, fallback behind a
``breaker``, limits to ``rollback`` by), ``shadow`` those that only score beside them, and
``role_changes`` changes them between two batches (a promotion, a roll-back); ``scored_groups``
says who else sees each scored group (shadows, and recorders such as a backfill's evaluation).

May import: ``streams.records``, ``streams.errors``, ``streams.source``, ``streams.metrics``,
``streams.codecs``, ``streams.features`` and ``models.protocol``; never a Kafka client.
"""
