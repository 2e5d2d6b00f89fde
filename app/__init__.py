"""Flowcore: a durable workflow-execution service and the asyncio engine underneath it."""
