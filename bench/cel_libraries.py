"""How the CEL libraries for Python compare on the evaluations Flowcore does.

Not part of `make bench` (the alternatives are not dependencies). To reproduce:

    .venv/bin/uv pip install --python .venv/bin/python cel-python cel-expr-python
    .venv/bin/python -m bench.cel_libraries

Prints µs per evaluation (median of 5 repetitions) for a condition over a node output
and an arithmetic over the input, with a small scope and with 1,000 completed nodes in
scope, plus µs per compile.
"""

from __future__ import annotations

import statistics
import timeit
from collections.abc import Callable
from typing import Any

SMALL: dict[str, Any] = {
    "input": {"x": 5},
    "vars": {},
    "nodes": {"fetch": {"output": {"total": 1500}}},
    "run": {"id": "r1"},
}
BIG_NODES: dict[str, Any] = {f"n{i}": {"output": {"v": i, "s": "x" * 20}} for i in range(1000)}
BIG_NODES["fetch"] = {"output": {"total": 1500}}
BIG: dict[str, Any] = {**SMALL, "nodes": BIG_NODES}
EXPRESSIONS = ["nodes.fetch.output.total > 1000", "input.x + 1"]


def _us(fn: Callable[[], Any], number: int) -> float:
    runs = [timeit.timeit(fn, number=number) / number * 1e6 for _ in range(5)]
    return statistics.median(runs)


def main() -> None:
    rows: list[tuple[str, str, str, float]] = []
    import cel  # common-expression-language (the one Flowcore uses)

    for src in EXPRESSIONS:
        program = cel.compile(src)
        rows.append(
            ("common-expression-language", src, "small", _us(lambda: program.execute(SMALL), 20000))
        )
        rows.append(
            (
                "common-expression-language",
                src,
                "1,000 nodes",
                _us(lambda: program.execute(BIG), 50),
            )
        )
    rows.append(
        (
            "common-expression-language",
            "compile",
            "",
            _us(lambda: cel.compile(EXPRESSIONS[0]), 2000),
        )
    )
    try:
        from cel_expr_python import cel as google_cel
    except ImportError:
        print("cel-expr-python not installed; skipped")
    else:
        env = google_cel.NewEnv(variables={k: google_cel.Type.DYN for k in SMALL})
        for src in EXPRESSIONS:
            expr = env.compile(src)
            rows.append(
                (
                    "cel-expr-python",
                    src,
                    "small",
                    _us(lambda: expr.eval(data=SMALL).plain_value(), 20000),
                )
            )
            rows.append(
                (
                    "cel-expr-python",
                    src,
                    "1,000 nodes",
                    _us(lambda: expr.eval(data=BIG).plain_value(), 50),
                )
            )
        rows.append(
            ("cel-expr-python", "compile", "", _us(lambda: env.compile(EXPRESSIONS[0]), 2000))
        )
    try:
        import celpy
    except ImportError:
        print("cel-python not installed; skipped")
    else:
        cenv = celpy.Environment()
        for src in EXPRESSIONS:
            prg = cenv.program(cenv.compile(src))
            rows.append(
                (
                    "cel-python",
                    src,
                    "small",
                    _us(lambda: prg.evaluate(celpy.json_to_cel(SMALL)), 500),
                )
            )
            rows.append(
                (
                    "cel-python",
                    src,
                    "1,000 nodes",
                    _us(lambda: prg.evaluate(celpy.json_to_cel(BIG)), 5),
                )
            )
    print(f"{'library':<28} {'expression':<34} {'scope':<12} {'µs':>10}")
    for lib, src, scope, us in rows:
        print(f"{lib:<28} {src:<34} {scope:<12} {us:>10.2f}")


if __name__ == "__main__":
    main()
