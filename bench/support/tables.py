"""The tables every benchmark prints: aligned text for a terminal, GitHub markdown for
docs/benchmarks*.md."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Table:
    title: str
    headers: list[str]
    align: str  # one "l" or "r" per column
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def render(self, markdown: bool) -> str:
        if markdown:
            lines = [f"### {self.title}", ""]
            lines.append("| " + " | ".join(self.headers) + " |")
            lines.append("|" + "|".join("---:" if a == "r" else ":---" for a in self.align) + "|")
            lines.extend("| " + " | ".join(row) + " |" for row in self.rows)
            if self.notes:
                lines.append("")
                lines.extend(f"- {note}" for note in self.notes)
            return "\n".join(lines) + "\n"
        widths = [
            max(len(self.headers[i]), *(len(row[i]) for row in self.rows))
            if self.rows
            else len(self.headers[i])
            for i in range(len(self.headers))
        ]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                c.rjust(w) if a == "r" else c.ljust(w)
                for c, w, a in zip(cells, widths, self.align, strict=True)
            ).rstrip()

        out = [self.title, "=" * len(self.title), line(self.headers)]
        out.append("  ".join("-" * w for w in widths))
        out.extend(line(row) for row in self.rows)
        out.extend(f"  * {note}" for note in self.notes)
        return "\n".join(out) + "\n"


def emit(table: Table, markdown: bool) -> None:
    print(table.render(markdown), flush=True)
