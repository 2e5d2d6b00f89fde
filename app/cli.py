"""The ``flowcore`` command line.

flowcore run WORKFLOW.json --input '{"k": "v"}'   run a workflow, printing events live
flowcore validate WORKFLOW.json                   report every problem in a definition
flowcore nodes                                    list the registered node types
flowcore serve / migrate                          serve the HTTP API / migrate the database
flowcore keys create --namespace team-a --role writer [--expires 30d]
flowcore keys list [--namespace team-a] / keys revoke ID / keys generate
flowcore secrets rotate / secrets generate-key     re-encrypt every secret with the first
                                                  FLOWCORE_SECRET_KEY / print a new key
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
    keys = sub.add_parser("keys", help="manage API keys (on FLOWCORE_DATABASE_URL)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key; it is printed this once")
    create.add_argument("--namespace", default="default", help="the key's namespace")
    create.add_argument("--role", required=True, choices=["admin", "writer", "reader", "metrics"])
    create.add_argument("--name", help="what the key is for")
    create.add_argument("--expires", help="how long it lives: 30d, 12h, 90m, 3600s")
    listing = keys_sub.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--namespace", help="only this namespace's")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    keys_sub.add_parser("generate", help="print a new random key for FLOWCORE_BOOTSTRAP_ADMIN_KEY")
    secrets = sub.add_parser("secrets", help="the encryption of secrets (FLOWCORE_SECRET_KEY)")
    secrets_sub = secrets.add_subparsers(dest="secrets_command", required=True)
    secrets_sub.add_parser(
        "rotate", help="re-encrypt every secret with the first key of FLOWCORE_SECRET_KEY"
    )
    secrets_sub.add_parser("generate-key", help="print a new key for FLOWCORE_SECRET_KEY")
    return parser


def _keys(args: argparse.Namespace, out: TextIO) -> int:
    from app.runtime.errors import InvalidValue, NotFound
    from app.runtime.keys import mint

    if args.keys_command == "generate":
        print(mint()[0], file=out)
        return EXIT_OK
    try:
        return asyncio.run(_manage_keys(args, out))
    except (InvalidValue, NotFound) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID


async def _manage_keys(args: argparse.Namespace, out: TextIO) -> int:
    """Keys straight on the database: the operator's way in (the audit log names the
    actor ``cli``); replicas that listen hear of a revocation at once."""
    from app.config import Settings
    from app.runtime.access import CLI, Role
    from app.runtime.audit import AuditLog
    from app.runtime.keys import KeyService, parse_duration
    from app.store import open_store
    from app.store.db import create_engine

    settings = Settings()
    engine = create_engine(settings.database_url, 1, 0)
    store = open_store(engine)
    audit = AuditLog(store)
    keys = KeyService(store, audit=audit)
    try:
        if args.keys_command == "create":
            expires = parse_duration(args.expires) if args.expires else None
            created = await keys.create(
                CLI,
                namespace=args.namespace,
                role=Role(args.role),
                name=args.name,
                expires_in=expires,
            )
            record = created.record
            print(created.key, file=out)
            print(
                f"created key {record.id} ({record.role} in {record.namespace}"
                + (f", expires in {args.expires}" if args.expires else "")
                + "): it is shown this once",
                file=sys.stderr,
            )
        elif args.keys_command == "list":
            for key in await keys.listing(CLI, args.namespace):
                state = "revoked" if key.revoked_at is not None else "active"
                print(
                    f"{key.id}  {key.namespace:<20} {key.role:<8} {state:<8} "
                    f"{_when(key.expires_at):<20} {key.name or ''}".rstrip(),
                    file=out,
                )
        else:
            await keys.revoke(CLI, args.key_id)
            print(f"revoked key {args.key_id}", file=out)
        await audit.settle()
        return EXIT_OK
    finally:
        keys.close()
        await store.close()
        await engine.dispose()


def _secrets(args: argparse.Namespace, out: TextIO) -> int:
    from app.runtime.secrets import SecretBox

    if args.secrets_command == "generate-key":
        print(SecretBox.generate_key(), file=out)
        return EXIT_OK
    return asyncio.run(_rotate_secrets(out))


async def _rotate_secrets(out: TextIO) -> int:
    """Re-encrypt every secret with the first key, straight on the database: after it,
    the keys after the first may be removed from FLOWCORE_SECRET_KEY."""
    from app.config import Settings
    from app.runtime.errors import SecretsUnavailable
    from app.runtime.secrets import SecretBox, SecretService
    from app.store import open_store
    from app.store.db import create_engine

    settings = Settings()
    box = SecretBox.from_setting(settings.secret_key)  # InvalidSecretKey: a ValueError
    engine = create_engine(settings.database_url, 1, 0)
    store = open_store(engine)
    try:
        rotated, unreadable = await SecretService(store, box).rotate()
    except SecretsUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    finally:
        await store.close()
        await engine.dispose()
    print(f"re-encrypted {rotated} secret(s) with the first key", file=out)
    if unreadable:
        print(
            f"{len(unreadable)} secret(s) no key of FLOWCORE_SECRET_KEY decrypts (left as "
            f"they are; set them again): {', '.join(unreadable)}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "never expires"
    import datetime

    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return "expires " + moment.strftime("%Y-%m-%dT%H:%MZ")


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
    if args.host:  # the app checks what it is bound to (auth may be off only on loopback)
        os.environ["FLOWCORE_HOST"] = args.host
    if args.port:
        os.environ["FLOWCORE_PORT"] = str(args.port)
    settings = Settings()
    configure_logging()
    from app.api.auth import announce_auth

    announce_auth(settings)  # the first line of the log when auth is off
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
        if args.command == "keys":
            return _keys(args, out)
        if args.command == "secrets":
            return _secrets(args, out)
        return _nodes(out)
    except WorkflowValidationError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    except (FlowcoreError, OSError, json.JSONDecodeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
