"""The ``flowcore`` command line.

flowcore run WORKFLOW.json --input '{"k": "v"}'   run a workflow, printing events live
flowcore validate WORKFLOW.json                   report every problem in a definition
flowcore nodes                                    list the registered node types
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from app.engine import (
    Event,
    ExecutionConfig,
    FlowcoreError,
    NodeRegistry,
    WorkflowDefinition,
    WorkflowExecutor,
    WorkflowValidationError,
    create_workflow,
    validate_workflow,
)

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def format_event(event: Event, limit: int = 160) -> str:
    """One line per event: sequence, type, node and a compact payload."""
    data = _json(event.data) if event.data else ""
    if len(data) > limit:
        data = data[: limit - 1] + "…"
    node = event.node_id or "-"
    return f"{event.seq:>5}  {event.type.value:<15} {node:<24} {data}".rstrip()


async def _run(args: argparse.Namespace, workflow: WorkflowDefinition, out: TextIO) -> int:
    if args.loop_check:  # lets tests see which loop actually ran
        print(f"event loop: {type(asyncio.get_running_loop()).__module__}", file=out)
    input_data = json.loads(args.input) if args.input else {}
    overrides: dict[str, Any] = json.loads(args.config) if args.config else {}
    executor = WorkflowExecutor(ExecutionConfig.model_validate(overrides))
    final: Event | None = None
    async for event in executor.stream(workflow, input_data):
        if not args.quiet:
            print(format_event(event), file=out, flush=True)
        final = event
    if final is None:  # pragma: no cover - a run always ends with a terminal event
        return EXIT_FAILED
    if final.type.value == "run.succeeded":
        print(json.dumps(final.data.get("output"), indent=2, default=str), file=out)
        return EXIT_OK
    print(f"run {final.type.value.split('.')[1]}: {_json(final.data)}", file=sys.stderr)
    return EXIT_FAILED


def _validate(args: argparse.Namespace, out: TextIO) -> int:
    issues = validate_workflow(Path(args.workflow).read_text(encoding="utf-8"))
    if not issues:
        print("valid", file=out)
        return EXIT_OK
    for issue in issues:
        print(f"- {issue}", file=out)
    return EXIT_INVALID


def _nodes(out: TextIO) -> int:
    for name in NodeRegistry.types():
        cls = NodeRegistry.get(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        print(f"{name:<14} {doc[0] if doc else ''}", file=out)
    return EXIT_OK


def _event_loop_policy(name: str) -> None:
    if name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowcore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a workflow file, printing its events as they happen")
    run.add_argument("workflow", help="a workflow definition (JSON or YAML)")
    run.add_argument("--input", "-i", help="the run input, as JSON")
    run.add_argument("--config", "-c", help="ExecutionConfig overrides, as JSON")
    run.add_argument("--quiet", "-q", action="store_true", help="print only the output")
    run.add_argument(
        "--loop", choices=["asyncio", "uvloop"], help="event loop (default: the config's policy)"
    )
    run.add_argument("--loop-check", action="store_true", help=argparse.SUPPRESS)
    validate = sub.add_parser("validate", help="validate a workflow file")
    validate.add_argument("workflow")
    sub.add_parser("nodes", help="list the registered node types")
    sub.add_parser("migrate", help="migrate the database (FLOWCORE_DATABASE_URL) to head")
    serve = sub.add_parser("serve", help="migrate the database, then serve the HTTP API")
    serve.add_argument("--host", help="default FLOWCORE_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, help="default FLOWCORE_PORT or 8000")
    serve.add_argument("--no-migrate", action="store_true", help="skip the migration step")
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    return parser


def _migrate() -> int:
    from app.config import Settings
    from app.store.migrate import upgrade

    upgrade(Settings().database_url)
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.config import Settings
    from app.observability.logging import configure_logging

    if args.workers > 1:  # inherited by the worker processes (see Settings.worker_processes)
        os.environ["FLOWCORE_WORKER_PROCESSES"] = str(args.workers)
    settings = Settings()
    configure_logging()
    if not args.no_migrate:
        _migrate()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers,
        loop="uvloop",
        log_level="info",
        log_config=None,  # keep the JSON logging configured above
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            workflow = create_workflow(Path(args.workflow).read_text(encoding="utf-8"))
            # precedence as everywhere: the workflow's config < the command line
            policy = args.loop
            if policy is None and args.config:
                policy = json.loads(args.config).get("event_loop_policy")
            if policy is None:
                policy = workflow.config.get("event_loop_policy")
            _event_loop_policy(policy or "asyncio")
            return asyncio.run(_run(args, workflow, out))
        if args.command == "validate":
            return _validate(args, out)
        if args.command == "migrate":
            return _migrate()
        if args.command == "serve":
            return _serve(args)
        return _nodes(out)
    except WorkflowValidationError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    except (FlowcoreError, OSError, json.JSONDecodeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
