"""Structured logs: one JSON object per line, carrying run and node ids when a record has
them, with credentials in URLs masked (secrets are never logged)."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_CREDENTIALS = re.compile(r"(\w+://[^:/@\s]+):[^@\s]+@")
_CONTEXT = ("run_id", "node_id", "workflow_id", "replica_id")


def mask(text: str) -> str:
    """``scheme://user:password@host`` -> ``scheme://user:***@host``."""
    return _CREDENTIALS.sub(r"\1:***@", text)


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", run_id?, node_id?, ..., "exc"?}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask(record.getMessage()),
        }
        for key in _CONTEXT:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = mask(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for the service's and uvicorn's loggers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("alembic").setLevel("WARNING")  # its start-up chatter
