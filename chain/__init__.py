"""Settlement on Ethereum (DESIGN §8): contract bindings, the chain view and
the oracle's epoch settlement."""
