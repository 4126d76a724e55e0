"""The engine's Kafka adapters, apart from its pure core: the consumer-group source
(``group_source``, ``fetch_pacing``, ``undecodable``) and its commits (``group_commits``; in
transactions: ``transactions``, ``transaction_commits``), the bounded replay (``replay``,
``offsets``), the producer sink (``sink``, ``batches``), per-key state's changelog
(``changelog``), re-keying (``rekey``), the model decisions' log (``keyed_log``), and what the
app asks of the cluster (``topic_admin``, ``key_owners``, ``tail``). Everything else in
``streams`` knows records, sources, sinks and progress only through the protocols in
``streams.source`` and ``streams.flow.delivery``, and imports no Kafka client, so the core could
be driven by another source.

May import: anything in ``streams`` and aiokafka; the rest of ``streams`` never imports this.
"""
