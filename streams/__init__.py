"""The engine: decode, batch, infer, encode, emit. Free of Faust; imports only ``models.protocol``."""
