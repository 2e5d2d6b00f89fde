"""Every value a request carries outside its body, typed with its range: ids by their
documented patterns, integers within the columns that hold them, no NaN, no infinity.
A value out of range is a 422 naming the parameter, before any handler runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Path, Query

from app.engine import WORKFLOW_ID_PATTERN

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
#: 0 to 2^31 - 1, in decimal digits without a sign or leading zeros
SEQUENCE_PATTERN = (
    r"^(0|[1-9][0-9]{0,8}|1[0-9]{9}|20[0-9]{8}|21[0-3][0-9]{7}|214[0-6][0-9]{6}"
    r"|2147[0-3][0-9]{5}|21474[0-7][0-9]{4}|214748[0-2][0-9]{3}|2147483[0-5][0-9]{2}"
    r"|21474836[0-3][0-9]|214748364[0-7])$"
)
#: the created-at and id of the last run of a page: what ``next_cursor`` holds
RUN_CURSOR_PATTERN = (
    r"^[0-9]{1,20}(\.[0-9]{1,20})?(e[+-]?[0-9]{1,2})?:[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
)

RunCursor = Annotated[
    str | None,
    Query(pattern=RUN_CURSOR_PATTERN, description="`next_cursor` of the previous page."),
]
#: the id of the last audit entry of the previous page
AUDIT_CURSOR_PATTERN = r"^[1-9][0-9]{0,9}$"
AuditCursor = Annotated[
    str | None,
    Query(pattern=AUDIT_CURSOR_PATTERN, description="`next_cursor` of the previous page."),
]
WorkflowCursor = Annotated[
    str | None,
    Query(pattern=WORKFLOW_ID_PATTERN, description="`next_cursor` of the previous page."),
]
EventCursor = Annotated[
    str | None,
    Query(
        pattern=SEQUENCE_PATTERN,
        description="`next_cursor` of the previous page (an event sequence number).",
    ),
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
