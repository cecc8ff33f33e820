"""The AURA application's workers: its catalog (``catalog/projection-catalog.yaml``) run by
the framework's supervisor, from any directory.

    python -m workers [--metrics-port 9464] [any other `aura-es workers run` option]

The worker runtime itself is the framework's (``aura_es.worker``); this package only
says which catalog and which handlers (``projections/``) the AURA application runs.
"""
