"""What a user writes: projection handlers (``Projection``, ``Tx``, ``on``), side-effect
actions, and the declarative (YAML) folds built from a catalog entry."""
