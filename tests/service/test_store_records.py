"""The store's records are its tables' rows, field for field, in column order (the SQLite
store builds them positionally from its SELECTs)."""

from __future__ import annotations

import dataclasses

import pytest

from app.store.models import (
    AuditRow,
    CheckpointRow,
    ConversationEntityRow,
    ConversationMessageRow,
    ConversationRow,
    EventRow,
    NodeResultRow,
    Run,
    SecretRow,
    SignalRow,
    WorkflowVersion,
)
from app.store.records import (
    StoredAudit,
    StoredCheckpoint,
    StoredConversation,
    StoredEntity,
    StoredEvent,
    StoredMessage,
    StoredNodeResult,
    StoredRun,
    StoredSecret,
    StoredSignal,
    StoredWorkflow,
)

PAIRS = [
    (StoredWorkflow, WorkflowVersion),
    (StoredRun, Run),
    (StoredEvent, EventRow),
    (StoredCheckpoint, CheckpointRow),
    (StoredNodeResult, NodeResultRow),
    (StoredSignal, SignalRow),
    (StoredAudit, AuditRow),
    (StoredSecret, SecretRow),
    (StoredConversation, ConversationRow),
    (StoredMessage, ConversationMessageRow),
    (StoredEntity, ConversationEntityRow),
]


@pytest.mark.parametrize(("record", "model"), PAIRS, ids=[r.__name__ for r, _ in PAIRS])
def test_a_record_has_its_tables_columns_in_order(record: type, model: type) -> None:
    columns = [column.name for column in model.__table__.columns]  # type: ignore[attr-defined]
    assert [field.name for field in dataclasses.fields(record)] == columns


def test_records_are_frozen_and_built_from_mappings() -> None:
    event = StoredEvent.from_mapping(
        {"run_id": "r", "seq": 3, "type": "node.completed", "data": {}, "created_at": 1.0}
    )
    assert event.node_id is None  # a column the mapping lacks
    assert StoredEvent.from_mapping({"seq": 1}, seq=2).seq == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.seq = 4  # type: ignore[misc]
