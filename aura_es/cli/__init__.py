"""The `aura-es` command line."""
