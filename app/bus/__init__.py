"""Live event fan-out: the in-process bus (and, later, Redis)."""

from app.bus.local import LocalEventBus, Subscription

__all__ = ["LocalEventBus", "Subscription"]
