"""Structured JSON logs carry run ids and never credentials."""

from __future__ import annotations

import json
import logging
import sys

from app.observability.logging import JsonFormatter, mask


def test_a_record_becomes_one_json_line_with_its_run_id() -> None:
    record = logging.LogRecord(
        "flowcore.runtime", logging.WARNING, __file__, 1, "run %s lost", ("r1",), None
    )
    record.run_id = "r1"
    record.node_id = "n3"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "warning"
    assert entry["logger"] == "flowcore.runtime"
    assert entry["message"] == "run r1 lost"
    assert (entry["run_id"], entry["node_id"]) == ("r1", "n3")
    assert entry["ts"].endswith("Z")


def test_credentials_in_urls_are_masked_in_messages_and_tracebacks() -> None:
    url = "postgresql+asyncpg://flowcore:s3cret@db:5432/flowcore"
    assert mask(url) == "postgresql+asyncpg://flowcore:***@db:5432/flowcore"
    try:
        raise ConnectionError(f"cannot reach {url}")
    except ConnectionError:
        record = logging.LogRecord(
            "flowcore", logging.ERROR, __file__, 1, "connect to %s", (url,), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "s3cret" not in line
    assert "flowcore:***@db" in json.loads(line)["message"]
    assert "exc" in json.loads(line)
