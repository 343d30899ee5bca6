"""The network layer: wire format and signatures (pure), libp2p host and
stream protocols."""
