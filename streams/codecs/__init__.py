"""Bytes in, bytes out: decoding events, encoding outputs and dead letters.

``codec`` is the one entry point (``EventSchema.decode``/``encode``): ``fast_decode`` reads a
batch with msgspec, ``careful_decode`` is the one-event-at-a-time reference that names a bad
event's reason, ``encode`` writes output records, ``key_field`` reads a key from a field,
``dead_letters`` writes what could not be scored with its reason and position; ``avro_outputs``
(and ``avro_scalars``, its common case) writes outputs as Avro in the registry's wire format.

May import: ``streams.records`` and ``streams.errors`` (and a features type name, for type
checking only); never the driver, the state or a Kafka client.
"""
