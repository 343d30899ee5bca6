"""Verification and reputation (DESIGN §7): the verifier draw, re-scoring
verdicts, attestations and reputation, as pure functions without I/O."""
