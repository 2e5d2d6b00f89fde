"""The ``http`` node type (placeholder until its module lands)."""
