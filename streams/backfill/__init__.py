"""History: the bounded replay's plan, its checkpoints and the file sinks a backfill writes.

``run`` drives a backfill through the live pipeline's driver in throughput mode;
``replay_plan`` says what each partition covers; ``checkpoint`` records how far a run got so
it resumes; ``file_sink`` and ``parquet_parts`` write outputs a data team can query;
``score_table`` keeps every model's score by position for an evaluation (``--labels``).

May import: ``streams.records``, ``streams.errors``, ``streams.source`` and ``streams.flow``;
never a Kafka client (the replay of Kafka topics is ``streams.kafka.replay``).
"""
