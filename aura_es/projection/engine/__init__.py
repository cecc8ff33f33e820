"""The projection engine: one ``Engine`` runs a projection, whoever drives it (a worker,
a rebuild, a dead letter's retry, the test kit), with one failure policy and one list of
middleware told before and after each step."""
