"""Every value a request carries outside its body, typed with its range: ids by their
documented patterns, integers within the columns that hold them, no NaN, no infinity.
A value out of range is a 422 naming the parameter, before any handler runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Path, Query

from app.engine.dsl import WORKFLOW_ID_PATTERN

#: the largest sequence, version or count a column holds (a 32-bit signed integer)
MAX_INT = 2**31 - 1
#: run ids: what the service hands out (32 hex digits), in a documented wider form
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: ``<run id>:<sequence>``
CHECKPOINT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}:[0-9]{1,10}$"

RunIdPath = Annotated[
    str, Path(pattern=RUN_ID_PATTERN, description="A run id (as `POST /v1/runs` returned it).")
]
WorkflowIdPath = Annotated[
    str,
    Path(
        pattern=WORKFLOW_ID_PATTERN,
        description="A workflow id: letters, digits, '.', '_' and '-', at most 128.",
    ),
]
VersionPath = Annotated[int, Path(ge=1, le=MAX_INT, description="A version number.")]
CheckpointIdPath = Annotated[
    str, Path(pattern=CHECKPOINT_ID_PATTERN, description="`<run_id>:<sequence>`.")
]

WorkflowIdQuery = Annotated[
    str | None, Query(pattern=WORKFLOW_ID_PATTERN, description="Only runs of this workflow.")
]
Cursor = Annotated[
    str | None,
    Query(max_length=300, description="`next_cursor` of the previous page."),
]
Limit = Annotated[int, Query(ge=1, le=200, description="Items per page.")]
Sequence = Annotated[
    int | None, Query(ge=0, le=MAX_INT, description="Start after this event sequence number.")
]
WaitSeconds = Annotated[
    float | None,
    Query(
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description="Block up to N seconds (at most FLOWCORE_MAX_WAIT_SECONDS) for the run "
        "to finish or wait.",
    ),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        # printable ASCII: what a header carries intact through every proxy
        pattern=r"^[\x20-\x7e]{1,200}$",
        description="Retries with the same key and body return the same run (200 chars).",
    ),
]
