"""Text formats for workflow definitions beyond JSON, registered as the
``flowcore.formats`` entry points so the engine itself needs no YAML library."""

from __future__ import annotations

from typing import Any

import yaml


def load_yaml(text: str) -> Any:
    """Parse YAML safely (no Python object tags)."""
    return yaml.safe_load(text)
