"""The ``memory`` node type: append to, read or clear a conversation."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.engine import (
    BaseNode,
    ConversationMemory,
    NodeConfigError,
    NodeContext,
    NodeRegistry,
    NodeResult,
    WorkflowContext,
)


class MessageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str = Field(min_length=1)
    content: str


class MemoryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    conversation: str | None = Field(
        None,
        description="Conversation id (templates allowed); default: the run's "
        "WorkflowContext.memory, else the run id.",
    )
    op: Literal["append", "read", "clear"] = "read"
    message: MessageSpec | None = None
    window: int | None = Field(None, ge=1, description="Messages to return (default: window_size).")

    @model_validator(mode="after")
    def _append_needs_message(self) -> MemoryConfig:
        if self.op == "append" and self.message is None:
            raise ValueError("op 'append' needs a message")
        return self


@NodeRegistry.register("memory")
class MemoryNode(BaseNode):
    """Appends a message to a conversation, reads it, or clears it; output: the
    conversation window ``{"summary", "messages"}``."""

    config_model = MemoryConfig
    config: MemoryConfig
    cacheable = False

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        config = node_context.config
        attached = workflow_context.memory
        conversation_id = config.get("conversation")
        store = node_context.memory_store
        if conversation_id is None and isinstance(attached, ConversationMemory):
            memory = attached
        else:
            conversation_id = str(conversation_id or workflow_context.run_id)
            memory = await store.load(conversation_id)
        op = self.config.op
        if op == "append":
            message: Any = config.get("message") or {}
            if not isinstance(message.get("content"), str):
                raise NodeConfigError("message.content must resolve to a string")
            memory.add_message(str(message["role"]), message["content"])
        elif op == "clear":
            memory.clear()
        if conversation_id is not None and memory is not attached:
            await store.save(str(conversation_id), memory)
        return NodeResult(output=memory.window(self.config.window))
