"""`python -m pipeline`: run the consumer pool, provision resources, operate the DLQ."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from prometheus_client import start_http_server

from config.settings import ConfigError, Settings
from pipeline.aws.clients import open_clients
from pipeline.aws.provision import provision
from pipeline.backends import data_dir_problem, open_backend
from pipeline.cli import bulk
from pipeline.cli.gc import GRACE_SECONDS, collect
from pipeline.cli.reconcile import reconcile
from pipeline.consumer.service import open_consumer
from pipeline.core import metrics, runtime
from pipeline.core.accounts import Accounts, NewKey
from pipeline.core.dlq import list_dead_letters, peek, redrive
from pipeline.core.errors import ServiceError
from pipeline.core.logs import configure_logging
from pipeline.core.usage import reconcile_usage
from pipeline.core.version import service_version
from pipeline.imaging.workers import die_with_parent, supervisor_pid
from pipeline.webhooks.undelivered import describe_event, redeliver

log = logging.getLogger("pipeline")


def _users_commands(users: argparse.ArgumentParser) -> None:
    user_commands = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    create = user_commands.add_parser("create", help="create a user (or use an existing one) and issue a key")
    create.add_argument("--user-id", help="a lowercase UUID (default: a new one)")
    create.add_argument("--name", default="", help="a label for people")
    user_commands.add_parser("list", help="users and their keys (ids and prefixes, never secrets)")
    choose = user_commands.add_parser("set", help="a user's settings: whether new images are public")
    choose.add_argument("user_id")
    default = choose.add_mutually_exclusive_group(required=True)
    default.add_argument(
        "--public-by-default", dest="public", action="store_true", help="new images are public"
    )
    default.add_argument(
        "--private-by-default", dest="public", action="store_false", help="new images are private"
    )
    revoke = user_commands.add_parser("revoke", help="revoke a key at once, in every process")
    revoke.add_argument("key_id")
    rotate = user_commands.add_parser("rotate", help="issue a new key for the key's user, revoke the old one")
    rotate.add_argument("key_id")
    recount = user_commands.add_parser(
        "reconcile", help="recompute every user's stored bytes and image count from their image records"
    )
    recount.add_argument("--dry-run", action="store_true", help="only report the drift")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description=(
            "Image pipeline tools. They use a data directory (--data-dir, IMGSVC_DATA_DIR), the "
            "configured AWS (AWS_* variables) or, when neither is given, the embedded endpoint of a "
            "running `python -m web` (IMGSVC_EMBEDDED_PORT)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {service_version()}")
    parser.add_argument(
        "--data-dir", type=Path, help="the local backend's directory, shared with `python -m web --data-dir`"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    consumer = commands.add_parser("consumer", help="run the consumer pool until SIGINT/SIGTERM")
    consumer.add_argument("--burst", action="store_true", help="exit once the queue is drained")
    commands.add_parser("provision", help="create buckets, queues, DLQ and notifications (idempotent)")
    doctor = commands.add_parser(
        "doctor", help="check the deployment's wiring (or the data directory), one line a check"
    )
    doctor.add_argument(
        "--role",
        choices=("api", "consumer", "all"),
        default="all",
        help="only the permissions of this process, tried with its credentials (default: "
        "the wiring, then both processes' permissions, with the credentials at hand)",
    )
    dlq = commands.add_parser("dlq", help="operate the dead-letter queue")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    listing = dlq_commands.add_parser("list", help="show dead-lettered messages with their reasons")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    listing.add_argument("--json", action="store_true", help="a JSON array of the messages")
    moving = dlq_commands.add_parser("redrive", help="move messages back to the main queue")
    moving.add_argument("--limit", type=int, default=None, help="at most this many (default all)")
    purge = dlq_commands.add_parser("purge", help="delete every message in the DLQ")
    purge.add_argument("--yes", action="store_true", help="required: purging cannot be undone")
    hooks = commands.add_parser("webhooks", help="webhook events that exhausted their attempts")
    hook_commands = hooks.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    undelivered = hook_commands.add_parser("list", help="show the events in the outbox's DLQ, with why")
    undelivered.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    undelivered.add_argument("--json", action="store_true", help="a JSON array of the events")
    again = hook_commands.add_parser("redeliver", help="send events back to the outbox, attempts renewed")
    again.add_argument("--event-id", action="append", default=[], help="only this event (repeatable)")
    again.add_argument("--limit", type=int, default=None, help="at most this many (default all)")
    _users_commands(commands.add_parser("users", help="manage users and their API keys"))
    rebuild = commands.add_parser(
        "reconcile",
        help="send lost events again, delete renditions whose original is gone (from the originals)",
    )
    rebuild.add_argument("--dry-run", action="store_true", help="only report what would be done")
    rebuild.add_argument(
        "--min-age",
        type=float,
        default=300.0,
        help="leave originals and renditions younger than this many seconds alone (default 300)",
    )
    sweep = commands.add_parser(
        "gc",
        help="remove orphans: originals without a record, renditions and variants without their "
        "original, records without an original, abandoned uploads",
    )
    sweep.add_argument("--dry-run", action="store_true", help="only count what would be removed")
    sweep.add_argument(
        "--grace",
        type=float,
        default=GRACE_SECONDS,
        help=f"leave anything younger than this many seconds alone (default {GRACE_SECONDS})",
    )
    sweep.add_argument(
        "--stale-uploads-after",
        type=float,
        default=GRACE_SECONDS,
        help=f"abort uploads begun this many seconds ago and never completed (default {GRACE_SECONDS})",
    )
    moving_out = commands.add_parser(
        "migrate", help="copy a data directory's users, records and images into the configured AWS"
    )
    moving_out.add_argument(
        "--from-data-dir", type=Path, required=True, metavar="DIR", help="the data directory to copy"
    )
    saving = commands.add_parser(
        "backup", help="back up a data directory, even while it serves, into a new directory"
    )
    saving.add_argument("out", type=Path, metavar="OUT", help="a new (or empty) directory for the backup")
    putting_back = commands.add_parser(
        "restore", help="restore a backup into a new (or empty) data directory"
    )
    putting_back.add_argument("backup", type=Path, metavar="BACKUP", help="a directory `backup` made")
    putting_back.add_argument("target", type=Path, metavar="DIR", help="the data directory to create")
    up = commands.add_parser("upload", help="upload image files and folders through the HTTP API")
    up.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or folders (recursively)")
    up.add_argument(
        "--api",
        help="the API's base URL (default: http://127.0.0.1:$IMGSVC_PORT, port 8080 if unset)",
    )
    up.add_argument("--key", help="API key (default: the IMGSVC_API_KEY variable)")
    up.add_argument(
        "--state",
        type=Path,
        default=Path(".imgsvc-upload-state.jsonl"),
        help="what is done; a run started again skips it (default ./.imgsvc-upload-state.jsonl)",
    )
    up.add_argument("--concurrency", type=int, default=4)
    up.add_argument("--no-progress", action="store_true", help="no progress bar")
    _data_dir_anywhere(parser)
    return parser


def serve_metrics(settings: Settings) -> None:
    """The consumer's Prometheus endpoint, on a port of its own (a thread of prometheus-client)."""
    port = settings.consumer.metrics_port
    if not port:
        return
    try:
        start_http_server(port, settings.consumer.metrics_host)
    except OSError as exc:  # several consumers on one machine: each needs its own port
        log.warning("metrics not served port=%d error=%s (set IMGSVC_METRICS_PORT per process)", port, exc)
        return
    log.info("metrics url=http://%s:%d/metrics", settings.consumer.metrics_host, port)


async def run_consumer(settings: Settings, burst: bool) -> int:
    serve_metrics(settings)
    async with (
        open_backend(settings) as backend,
        open_consumer(backend, settings, burst=burst) as consumer,
    ):
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, consumer.stop)
        async with metrics.queue_sampling(backend.queues()):
            stats = await consumer.run()
    print(json.dumps({"received": stats.received, "outcomes": dict(stats.outcomes)}))
    return 0


async def run_provision(settings: Settings) -> int:
    if settings.local.data_dir is not None:  # opening a data directory provisions it
        async with open_backend(settings, provision_first=True):  # and the store's buckets, if any
            print(json.dumps({"data_dir": str(settings.local.data_dir)}))
        return 0
    async with open_clients(settings.aws) as clients:
        result = await provision(clients, settings)
    print(json.dumps(result.__dict__))
    return 0


async def run_doctor(settings: Settings, role: str = "all") -> int:
    """One line a check; exit 1 if any failed."""
    if settings.local.data_dir is not None:
        from pipeline.local.doctor import diagnose as diagnose_local

        findings = diagnose_local(settings.local.data_dir, settings.local.min_free_bytes)
        if settings.aws.s3_endpoint_url:  # the objects are in an S3-compatible store
            from pipeline.aws.clients import open_s3
            from pipeline.aws.doctor import diagnose_objects

            async with open_s3(settings.aws) as s3:
                findings += await diagnose_objects(s3, settings)
    else:
        from pipeline.aws.doctor import diagnose

        roles = ("api", "consumer") if role == "all" else (role,)
        async with open_clients(settings.aws) as clients:
            findings = await diagnose(clients, settings, roles, wiring=role == "all")
    for finding in findings:
        print(finding.line())
    failed = sum(not finding.ok for finding in findings)
    print(
        f"{len(findings) - failed} ok, {failed} failed"
        + (
            ": `python -m pipeline provision` fixes what it made"
            if failed and (settings.local.data_dir is None or settings.aws.s3_endpoint_url)
            else ""
        )
    )
    return 1 if failed else 0


async def run_dlq(settings: Settings, args: argparse.Namespace) -> int:
    async with open_backend(settings) as queues:
        if args.dlq_command == "list":
            letters = await list_dead_letters(queues.dlq, limit=args.limit)
            if args.json:
                print(json.dumps([letter.as_dict() for letter in letters], indent=2))
                return 0
            for letter in letters:
                keys = ",".join(letter.keys) or "-"
                print(f"{letter.message_id}  {letter.error_code}  attempts={letter.attempts}  keys={keys}")
                print(f"    {letter.error_message}")
                if letter.body:
                    print(f"    body: {letter.body}")
            print(f"{len(letters)} message(s) in the DLQ")
        elif args.dlq_command == "redrive":
            moved = await redrive(queues.dlq, queues.main, limit=args.limit)
            print(f"moved {moved} message(s) back to {settings.aws.queue_name}")
        else:
            if not args.yes:
                print("refusing to purge without --yes", file=sys.stderr)
                return 2
            await queues.dlq.purge()
            print(f"purged {settings.aws.dlq_name}")
    return 0


async def run_webhooks(settings: Settings, args: argparse.Namespace) -> int:
    async with open_backend(settings) as backend:
        if args.webhooks_command == "list":
            events = await peek(backend.outbox_dlq, describe_event, limit=args.limit)
            if args.json:
                print(json.dumps([event.as_dict() for event in events], indent=2))
                return 0
            for event in events:
                print(
                    f"{event.event_id or event.message_id}  {event.type or '-'}  owner={event.owner or '-'}"
                    f"  image={event.image_id or '-'}  {event.error_code}  attempts={event.attempts}"
                )
                print(f"    {event.error_message}")
                if event.body:
                    print(f"    body: {event.body}")
            print(f"{len(events)} event(s) not delivered")
        else:
            moved = await redeliver(
                backend.outbox_dlq, backend.outbox, event_ids=frozenset(args.event_id), limit=args.limit
            )
            print(f"sent {moved} event(s) back to {settings.aws.outbox_name}")
    return 0


async def run_users(settings: Settings, args: argparse.Namespace) -> int:
    """Keys are printed once, here, and stored only as hashes."""
    async with open_backend(settings) as backend:
        accounts = Accounts(backend.tables)
        if args.users_command == "create":
            try:
                user_id = await accounts.create_user(args.user_id, args.name)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(json.dumps(_new_key(await accounts.issue_key(user_id))))
        elif args.users_command == "list":
            for user in await accounts.users():
                keys = await accounts.keys(str(user["user_id"]))
                print(json.dumps({**user, "keys": keys}))
        elif args.users_command == "reconcile":
            report = await reconcile_usage(backend.tables, dry_run=args.dry_run)
            print(json.dumps(report.as_dict(), indent=2))
        elif args.users_command == "set":
            user = await accounts.set_public_by_default(args.user_id, args.public)
            print(json.dumps({"user_id": args.user_id, "public_by_default": user["public_by_default"]}))
        elif args.users_command == "revoke":
            revoked = await accounts.revoke(args.key_id)
            print(json.dumps({"key_id": args.key_id, "revoked_at": revoked["revoked_at"]}))
        else:
            print(json.dumps(_new_key(await accounts.rotate(args.key_id)) | {"revoked": args.key_id}))
    return 0


async def run_reconcile(settings: Settings, dry_run: bool, min_age: float) -> int:
    async with open_backend(settings, maintain=not dry_run) as backend:
        report = await reconcile(backend, settings, dry_run=dry_run, min_age=min_age)
    print(json.dumps(report.as_dict(), indent=2))
    return 0


async def run_gc(settings: Settings, args: argparse.Namespace) -> int:
    async with open_backend(settings, maintain=not args.dry_run) as backend:
        report = await collect(
            backend,
            settings,
            dry_run=args.dry_run,
            grace=args.grace,
            stale_uploads_after=args.stale_uploads_after,
        )
    print(json.dumps(report.as_dict(), indent=2))
    return 0


async def run_migrate(settings: Settings, from_dir: Path) -> int:
    """From a data directory into the AWS the environment names (provisioned already)."""
    if settings.local.data_dir is not None:
        print(
            "error: migrate copies --from-data-dir into AWS: the target cannot be a data directory",
            file=sys.stderr,
        )
        return 2
    from pipeline.local.backend import DATABASE_NAME

    if not (from_dir / DATABASE_NAME).is_file():
        print(f"error: {from_dir} is not a data directory (no {DATABASE_NAME})", file=sys.stderr)
        return 2
    environ = {k: v for k, v in os.environ.items() if k != "IMGSVC_MODE"}
    source_settings = Settings.from_env({**environ, "IMGSVC_DATA_DIR": str(from_dir)})
    if problem := data_dir_problem(source_settings):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from pipeline.cli.migrate import migrate

    async with open_backend(source_settings) as source, open_backend(settings) as target:
        report = await migrate(source, target, settings)
    print(json.dumps(report.as_dict(), indent=2))
    return 0


def run_backup(settings: Settings, out: Path) -> int:
    """Backups are the local backend's: on AWS, S3 versioning and DynamoDB's point-in-time
    recovery keep the history (docs/operations.md). With its objects in an S3-compatible store,
    the backup holds the data directory alone; the store keeps (and backs up) the objects."""
    if settings.local.data_dir is None:
        print("error: backup needs the data directory to back up: --data-dir DIR", file=sys.stderr)
        return 2
    from pipeline.local.backup import BackupError, backup

    try:
        report = backup(settings.local.data_dir, out)
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    answer: dict[str, object] = {"backup": str(out), **dataclasses.asdict(report)}
    if settings.aws.s3_endpoint_url:
        answer["objects_not_included"] = f"the images' bytes are in {settings.aws.s3_endpoint_url}"
    print(json.dumps(answer, indent=2))
    return 0


def run_restore(backup_dir: Path, target: Path) -> int:
    from pipeline.local.backup import BackupError, restore

    try:
        report = restore(backup_dir, target)
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"restored": str(target), **dataclasses.asdict(report)}, indent=2))
    return 0


def _new_key(new: NewKey) -> dict[str, str]:
    return {"user_id": new.user_id, "key_id": new.key_id, "key": new.key, "note": "shown once; store it now"}


async def run_upload(args: argparse.Namespace) -> int:
    key = args.key or os.environ.get("IMGSVC_API_KEY", "")
    if not key:
        print("error: an API key is needed: --key or IMGSVC_API_KEY", file=sys.stderr)
        return 2
    if missing := [str(p) for p in args.paths if not p.exists()]:
        print(f"error: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    web_settings = Settings.from_env().web  # main() has checked the environment already
    api = args.api or bulk.default_api(web_settings.host, web_settings.port)
    summary = await bulk.upload(
        api.rstrip("/"), key, args.paths, args.state, args.concurrency, progress=not args.no_progress
    )
    for line in summary.report():
        print(line, file=sys.stderr)
    print(json.dumps(summary.as_dict(), indent=2))
    return 1 if summary.failed else 0


def _data_dir_anywhere(parser: argparse.ArgumentParser) -> None:
    """`--data-dir` after the command too (`users create --name carol --data-dir X`), as people
    type it: every subcommand takes it, and only a value given there replaces the top level's."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
                _data_dir_anywhere(sub)


def _unreachable_embedded(settings: Settings) -> str | None:
    """Without AWS configured the tools talk to a running `python -m web`'s embedded endpoint;
    when nothing answers there, say so and which variables point elsewhere (not a retry storm)."""
    if settings.aws.mode != "embedded" or settings.aws.endpoint_url:
        return None
    host, port = settings.aws.embedded_host, settings.aws.embedded_port
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        return (
            f"no embedded AWS endpoint answers at {host}:{port} ({exc.strerror or exc}). Start "
            "`python -m web` (it runs one), or set IMGSVC_EMBEDDED_PORT to the port it uses; for a "
            "data directory (`python -m web --data-dir DIR`) give the same --data-dir DIR here; for "
            "AWS set AWS_ENDPOINT_URL (or AWS credentials, AWS_PROFILE)."
        )
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (supervisor := supervisor_pid()) is not None:  # a consumer `python -m web --workers` started
        die_with_parent(supervisor)
    if args.command == "restore":  # into a directory no process uses yet: no settings, no backend
        return run_restore(args.backup, args.target)
    environ = dict(os.environ)
    if args.data_dir is not None:
        environ["IMGSVC_DATA_DIR"] = str(args.data_dir)
    try:
        settings = Settings.from_env(environ)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    # `doctor` looks at the directory as it is: preparing it would create it and narrow its modes.
    if args.command not in ("upload", "doctor") and (problem := data_dir_problem(settings)):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.command == "backup":  # files and SQLite, in this thread: no backend is opened
        return run_backup(settings, args.out)
    if args.command != "upload" and (problem := _unreachable_embedded(settings)):
        print(f"error: {problem}", file=sys.stderr)
        return 1
    try:
        if args.command == "consumer":
            main_coroutine = run_consumer(settings, args.burst)
        elif args.command == "provision":
            main_coroutine = run_provision(settings)
        elif args.command == "doctor":
            main_coroutine = run_doctor(settings, args.role)
        elif args.command == "migrate":
            main_coroutine = run_migrate(settings, args.from_data_dir)
        elif args.command == "users":
            main_coroutine = run_users(settings, args)
        elif args.command == "upload":
            main_coroutine = run_upload(args)
        elif args.command == "reconcile":
            main_coroutine = run_reconcile(settings, args.dry_run, args.min_age)
        elif args.command == "gc":
            main_coroutine = run_gc(settings, args)
        elif args.command == "webhooks":
            main_coroutine = run_webhooks(settings, args)
        else:
            main_coroutine = run_dlq(settings, args)
        return runtime.run(main_coroutine, use_uvloop=settings.use_uvloop, debug=settings.loop_debug)
    except ServiceError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
