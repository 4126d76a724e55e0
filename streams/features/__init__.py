"""Per-key features computed in the stream: from each key's earlier events, in partition order.

- ``spec``: what the config declares (the features, the key's TTL, how many events a key keeps);
- ``store``: the state itself, per input partition, column-wise in numpy arrays;
- ``rocks_store``, ``local_db``: state larger than memory: RocksDB per partition, the keys in use cached;
- ``folders``: the folders sluice makes for one process in a state directory, and their clean-up;
- ``serving``: a key's state as ``GET /pipelines/NAME/keys/KEY`` answers it (reading only);
- ``aggregate``: each feature, vectorised over a batch of events and their keys' windows;
- ``step``: the pipeline's step between decoding and the model (batch in, model inputs out);
- ``snapshot``: a key's state as bytes, for the changelog topic that restores it;
- ``damage``: damaged records in a local RocksDB copy, and what is done about them.

May import: ``streams.records``, ``streams.errors`` and each other; never the driver, the
codecs (but for type names) or a Kafka client (the changelog topic is ``streams.kafka.changelog``).
"""
