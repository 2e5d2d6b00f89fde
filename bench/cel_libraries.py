"""How the CEL libraries for Python compare on the evaluations Flowcore does.

Not part of `make bench` (the alternatives are not dependencies). To reproduce:

    .venv/bin/uv pip install --python .venv/bin/python cel-python common-expression-language
    .venv/bin/python -m bench.cel_libraries

Prints µs per evaluation (median of 5 repetitions) for a condition over a node output
and an arithmetic over the input, with a small scope and with 1,000 completed nodes in
scope, plus µs per compile.
"""

from __future__ import annotations

import statistics
import timeit
from collections.abc import Callable
from functools import partial
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


def _measure(
    rows: list[tuple[str, str, str, float]],
    library: str,
    source: str,
    run: Callable[[dict[str, Any]], Any],
    slow: bool = False,
) -> None:
    rows.append((library, source, "small", _us(lambda: run(SMALL), 500 if slow else 20000)))
    rows.append((library, source, "1,000 nodes", _us(lambda: run(BIG), 5 if slow else 50)))


def _google_eval(expr: Any, data: dict[str, Any]) -> Any:
    return expr.eval(data=data).plain_value()


def _celpy_eval(program: Any, celpy: Any, data: dict[str, Any]) -> Any:
    return program.evaluate(celpy.json_to_cel(data))


def main() -> None:
    rows: list[tuple[str, str, str, float]] = []
    from cel_expr_python import cel as google_cel  # the runtime Flowcore uses

    env = google_cel.NewEnv(variables=dict.fromkeys(SMALL, google_cel.Type.DYN))
    for src in EXPRESSIONS:
        expr = env.compile(src)
        _measure(rows, "cel-expr-python", src, partial(_google_eval, expr))
    rows.append(("cel-expr-python", "compile", "", _us(lambda: env.compile(EXPRESSIONS[0]), 2000)))
    try:
        import cel
    except ImportError:
        print("common-expression-language not installed; skipped")
    else:
        for src in EXPRESSIONS:
            program = cel.compile(src)
            _measure(rows, "common-expression-language", src, program.execute)
        rows.append(
            (
                "common-expression-language",
                "compile",
                "",
                _us(lambda: cel.compile(EXPRESSIONS[0]), 2000),
            )
        )
    try:
        import celpy
    except ImportError:
        print("cel-python not installed; skipped")
    else:
        cenv = celpy.Environment()
        for src in EXPRESSIONS:
            prg = cenv.program(cenv.compile(src))
            _measure(
                rows,
                "cel-python",
                src,
                partial(_celpy_eval, prg, celpy),
                slow=True,
            )
    print(f"{'library':<28} {'expression':<34} {'scope':<12} {'µs':>10}")
    for lib, src, scope, us in rows:
        print(f"{lib:<28} {src:<34} {scope:<12} {us:>10.2f}")


if __name__ == "__main__":
    main()
