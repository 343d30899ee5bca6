"""inferad: the node daemon of a decentralized LLM-inference network."""

__version__ = "0.1.0"
