"""Readers, the parsed-examples block and the synthetic stream generator."""

from jaxstream.data.examples import Examples, ReadReport
from jaxstream.data.readers import read_avazu, read_criteo, read_slots
from jaxstream.data.synthetic import StreamConfig, SyntheticStream, generate

__all__ = [
    "Examples",
    "ReadReport",
    "StreamConfig",
    "SyntheticStream",
    "generate",
    "read_avazu",
    "read_criteo",
    "read_slots",
]
