"""``RunBudget``: one run's work and data, counted against the budgets of its
``ExecutionConfig`` (see ``config.BUDGET_FIELDS``).

A run and every body run nested in it (map items, loop iterations, sub-workflows) share
one budget. Crossing a budget fails the *whole run* with kind ``budget``: no fallback, no
``on_error: continue`` and no error handler turns it into a success, because a budget is
the operator's bound on what one run may cost a replica.
"""

from __future__ import annotations

from app.engine.config import ExecutionConfig
from app.engine.errors import FlowcoreError

__all__ = ["BudgetExceededError", "RunBudget"]


class BudgetExceededError(FlowcoreError):
    """A run crossed one of its budgets; ``budget`` names the knob, ``limit`` its value."""

    kind = "budget"

    def __init__(self, budget: str, limit: float, what: str) -> None:
        super().__init__(f"{what}: the run's budget {budget} is {limit:g}")
        self.budget = budget
        self.limit = limit


class RunBudget:
    """Counters of one run; each ``add_*`` returns the error to fail the run with once a
    budget is crossed (None while within it)."""

    __slots__ = ("config", "executions", "state_bytes", "subruns")

    def __init__(self, config: ExecutionConfig) -> None:
        self.config = config
        self.executions = 0
        self.subruns = 0
        self.state_bytes = 0

    def add_execution(self) -> BudgetExceededError | None:
        self.executions += 1
        limit = self.config.max_node_executions
        if self.executions > limit:
            return BudgetExceededError(
                "max_node_executions", limit, f"the run would execute more than {limit} nodes"
            )
        return None

    def add_subrun(self) -> BudgetExceededError | None:
        self.subruns += 1
        limit = self.config.max_subruns
        if self.subruns > limit:
            return BudgetExceededError(
                "max_subruns", limit, f"the run would start more than {limit} sub-workflow runs"
            )
        return None

    def add_output(self, size: int) -> BudgetExceededError | None:
        """A node produced ``size`` bytes (as JSON)."""
        limit = self.config.max_output_bytes
        if size > limit:
            return BudgetExceededError(
                "max_output_bytes", limit, f"a node's output is {size} bytes"
            )
        self.state_bytes += size
        total = self.config.max_state_bytes
        if self.state_bytes > total:
            return BudgetExceededError(
                "max_state_bytes", total, f"the run's outputs add up to {self.state_bytes} bytes"
            )
        return None

    def check_map(self, items: int) -> BudgetExceededError | None:
        limit = self.config.max_map_items
        if items > limit:
            return BudgetExceededError("max_map_items", limit, f"a map over {items} items")
        return None

    def check_delay(self, seconds: float) -> BudgetExceededError | None:
        limit = self.config.max_delay_seconds
        if seconds > limit:
            return BudgetExceededError("max_delay_seconds", limit, f"a delay of {seconds:g}s")
        return None
