"""The command line's parser and commands (SPEC 1); run.py's `main` parses, dispatches and prints."""

import argparse
import asyncio
import os
import sys

from pulse import __version__, apikeys, db, projects
from pulse.config import describe as describe_settings
from pulse.migrations import migrate_database
from pulse.security import SecretBox

SANDBOX_ADMIN = "admin+<project id>@sandbox.test"  # `create-project Demo --sandbox` needs no other argument


class CliError(Exception):
    """A command failed; `status` is the exit code (1 unknown thing, 2 usage)."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit status 2."""

    def error(self, message):
        raise CliError(message, status=2)


def _positive(text):
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _serve_options(parser):
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--processes", type=_positive, default=1)


def build_parser():
    parser = Parser(
        prog="run.py",
        description="PaymentPulse: self-hosted Stripe billing gateway.",
        epilog="environment variables (default):\n" + describe_settings(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"PaymentPulse {__version__}")
    _serve_options(parser)
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    _serve_options(sub.add_parser("serve", help="apply migrations and serve HTTP (default)"))

    migrate_cmd = sub.add_parser("migrate", help="apply pending schema migrations")
    migrate_cmd.add_argument("--json", action="store_true")

    secret_help = "a literal value is visible in `ps`: prefer `-` (read a line from stdin) or env:NAME"
    project = sub.add_parser("create-project", help="create a project, its admin and first API key")
    project.add_argument("name")
    project.add_argument("--admin-email", help=f"required, except with --sandbox (default {SANDBOX_ADMIN})")
    project.add_argument("--admin-password", help=secret_help)
    project.add_argument("--stripe-secret-key", help=secret_help)
    project.add_argument("--stripe-webhook-secret", help=secret_help)
    project.add_argument(
        "--sandbox", action="store_true", help="use the built-in Stripe simulator (offline; keys read pp_test_…)"
    )
    project.add_argument("--json", action="store_true")

    key = sub.add_parser("create-api-key", help="issue another API key for a project")
    key.add_argument("project_id")
    key.add_argument("--label", default="")
    key.add_argument("--json", action="store_true")

    stripe_cmd = sub.add_parser("set-stripe", help="store a project's Stripe secret key / webhook secret")
    stripe_cmd.add_argument("project_id")
    stripe_cmd.add_argument("--secret-key", help=secret_help)
    stripe_cmd.add_argument("--webhook-secret", help=secret_help)
    stripe_cmd.add_argument("--json", action="store_true")

    sub.add_parser("worker", help="apply stored webhook events (with PULSE_WEBHOOK_APPLY=worker) until SIGTERM")

    sync = sub.add_parser("sync-stripe", help="re-read a project's subscriptions from Stripe (missed webhooks)")
    sync.add_argument("project_id")
    sync.add_argument("--json", action="store_true")
    return parser


def read_secrets(args, options, stdin=None, environ=None):
    """Resolve secret options in place: `-` reads the next line of stdin, `env:NAME` a variable.

    Secrets given this way stay out of argv, which every local user can read with `ps` (L9).
    Several `-` options read one line each, in the order of `options`.
    """
    stdin = sys.stdin if stdin is None else stdin
    environ = os.environ if environ is None else environ
    for option in options:
        value = getattr(args, option)
        flag = "--" + option.replace("_", "-")
        if value == "-":
            line = stdin.readline()
            if not line:
                raise CliError(f"{flag} -: no line to read on stdin", status=2)
            value = line.rstrip("\r\n")
        elif value is not None and value.startswith("env:"):
            name = value[4:]
            if not environ.get(name):
                raise CliError(f"{flag} {value}: the variable {name} is not set", status=2)
            value = environ[name]
        setattr(args, option, value)


def cmd_migrate(config, args, echo):
    """Apply pending migrations; -> what was applied."""
    applied = migrate_database()
    return {"applied": applied}, [f"applied: {name}" for name in applied] or ["database is up to date"]


def cmd_create_project(config, args, echo):
    """Create a project, its admin and first API key; -> the key and password (shown once)."""
    if not args.name.strip() or len(args.name) > 200:
        raise CliError("project name must be 1-200 characters", status=2)
    if args.admin_email is None and not args.sandbox:
        raise CliError("the following arguments are required: --admin-email", status=2)
    try:
        if args.admin_email is not None:  # None on a sandbox: an account of the project's own
            projects.validate_admin_email(args.admin_email)
    except projects.Refused:
        raise CliError(f"invalid --admin-email {args.admin_email!r}", status=2) from None
    read_secrets(args, ("admin_password", "stripe_secret_key", "stripe_webhook_secret"))
    try:
        if args.admin_password is not None:
            projects.validate_admin_password(args.admin_password, "--admin-password")
        projects.validate_stripe_secrets(args.stripe_secret_key, args.stripe_webhook_secret)
    except projects.Refused as exc:
        raise CliError(str(exc).rstrip("."), status=2) from None
    try:
        with db.block():
            created = projects.create_project(
                args.name,
                args.admin_email,
                SecretBox(config.secret_key),
                admin_password=args.admin_password,
                stripe_secret_key=args.stripe_secret_key,
                stripe_webhook_secret=args.stripe_webhook_secret,
                sandbox=args.sandbox,
            )
    except projects.SandboxRule as exc:
        raise CliError(str(exc), status=2) from None
    except projects.Refused as exc:
        raise CliError(str(exc).rstrip("."), status=2) from None
    data = {
        "project_id": created.project.public_id,
        "name": created.project.name,
        "api_key": created.api_key.api_key,
        "admin_email": created.admin.email,
        "webhook_path": f"/api/webhook/{created.project.public_id}",
        "sandbox": created.project.sandbox,
    }
    if created.admin_password:
        data["admin_password"] = created.admin_password
    lines = [
        f"project {data['project_id']} ({data['name']})",
        f"api key: {data['api_key']}  (shown once)",
        f"admin: {data['admin_email']}",
    ]
    if created.admin_password:
        lines.append(f"admin password: {created.admin_password}  (shown once)")
    lines.append(f"webhook path: {data['webhook_path']}")
    if created.project.sandbox:
        host = projects.local_base(config)
        lines += [
            "sandbox: its Stripe is the built-in simulator (offline; webhooks are sent for you)",
            f"console: {host}/console/ (sign in as {data['admin_email']}"
            + (")" if created.admin_password else ", with this account's existing password)"),
        ]
    return data, lines


def _project(project_id):
    try:
        return projects.get_project(project_id)
    except projects.NotFound:
        raise CliError(f"no project {project_id!r}", status=1) from None


def cmd_create_api_key(config, args, echo):
    """Issue another API key for a project (audited as actor cli); -> the key (shown once)."""
    with db.block():
        project = _project(args.project_id)
        issued = apikeys.issue(project, label=args.label)
        projects.audit("api_key.created", project=project, actor="cli", key_id=issued.key_id, prefix=issued.prefix)
    return (
        {"api_key": issued.api_key, "key_id": issued.key_id, "prefix": issued.prefix},
        [f"api key: {issued.api_key}  (shown once)", f"key id: {issued.key_id}"],
    )


def cmd_set_stripe(config, args, echo):
    """Store a project's Stripe secret key and/or webhook secret; -> them masked."""
    if args.secret_key is None and args.webhook_secret is None:
        raise CliError("give --secret-key and/or --webhook-secret", status=2)
    read_secrets(args, ("secret_key", "webhook_secret"))
    try:
        projects.validate_stripe_secrets(args.secret_key, args.webhook_secret)
        with db.block():
            project = _project(args.project_id)
            changed = projects.set_stripe(
                project, SecretBox(config.secret_key), secret_key=args.secret_key, webhook_secret=args.webhook_secret
            )
    except projects.SandboxRule as exc:
        raise CliError(str(exc), status=2) from None
    except projects.Refused as exc:
        raise CliError(str(exc).rstrip("."), status=2) from None
    return (
        {"project_id": project.public_id, "updated": changed},
        [f"{name} set to {masked}" for name, masked in changed.items()],
    )


def cmd_sync_stripe(config, args, echo):
    """Re-read a project's subscriptions from Stripe; -> the counts. CliError when Stripe fails."""
    from pulse import billing, resync

    with db.block():
        project = _project(args.project_id)
    progress = None if args.json else echo

    async def run():
        try:
            return await resync.sync_project(
                project, config=config, box=SecretBox(config.secret_key), progress=progress
            )
        finally:
            await billing.close_clients()

    try:
        counts = asyncio.run(run())
    except billing.StripeNotConfigured:
        raise CliError(f"project {project.public_id} has no Stripe secret key (and none deployment-wide)") from None
    except billing.StripeFailure as exc:
        raise CliError(f"Stripe: {exc.message}") from None
    return (
        dict(counts, project_id=project.public_id),
        [
            f"synced {counts['subscriptions']} subscription(s) of {counts['customers']} customer(s): "
            f"{counts['created']} created, {counts['updated']} updated, {counts['unchanged']} unchanged, "
            f"{counts['stale']} newer locally, {counts['unmatched']} without a customer, "
            f"{counts['skipped']} of other projects"
        ],
    )


# Each command: (config, args, echo) -> (data for --json, lines for people); `echo` prints a progress line now.
COMMANDS = {
    "migrate": cmd_migrate,
    "create-project": cmd_create_project,
    "create-api-key": cmd_create_api_key,
    "set-stripe": cmd_set_stripe,
    "sync-stripe": cmd_sync_stripe,
}
