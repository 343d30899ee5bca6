"""The flow harmonizer: which worker runs a job (DESIGN §6).

Pure functions of (job, candidate adverts, reputation, failures, RTTs) to an
ordered list of attempts; no I/O, no trio, so every policy is a plain test.
"""
