"""Readers, the parsed-examples block and the synthetic stream generator."""

from jaxstream.data.examples import Examples, ReadReport
from jaxstream.data.paddlerec import read_paddlerec
from jaxstream.data.readers import read_avazu, read_criteo, read_slots
from jaxstream.data.synthetic import (
    GridBayesLearner,
    StreamConfig,
    SyntheticStream,
    generate,
)

__all__ = [
    "Examples",
    "GridBayesLearner",
    "ReadReport",
    "StreamConfig",
    "SyntheticStream",
    "generate",
    "read_avazu",
    "read_criteo",
    "read_paddlerec",
    "read_slots",
]
