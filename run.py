"""PaymentPulse entry point: `make_app(config)` and the command line (SPEC 1)."""

import argparse
import asyncio
import hashlib
import hmac
import importlib
import json
import os
import sys
from pathlib import Path

import peewee
import tornado.web

import web
from console.base import make_jinja_env
from console.static import StaticFiles
from handlers.base import NotFoundHandler, log_request
from pulse import __version__, apikeys, db, projects, security
from pulse.config import ConfigError, load_config
from pulse.config import describe as describe_settings
from pulse.logs import setup_logging
from pulse.migrations import migrate_database
from pulse.outcomes import Outcome
from pulse.ratelimit import make_limiter
from pulse.security import SecretBox
from pulse.status import Status
from server import serve

ROOT = Path(__file__).resolve().parent
SANDBOX_ADMIN = "admin@sandbox.test"  # `create-project Demo --sandbox` needs no other argument

# Modules whose `default_handlers` make up the app, in matching order.
HANDLER_MODULES = [
    "handlers.health",
    "handlers.export",
    "handlers.openapi",
    "handlers.billing",
    "handlers.plans",
    "handlers.webhooks",
    "handlers.webhook_endpoints",
    "handlers.manage",
    "console.status",
    "console.auth",
    "console.dashboard",
    "console.keys",
    "console.customers",
    "console.exports",
    "console.events",
    "console.settings",
    "console.plans",
    "console.sandbox",
    "sandbox.api",
    "sandbox.pages",
    "console.webhooks_out",
    "console.fallback",  # the console's catch-all 404: keep it last among console modules
]


class PulseApplication(tornado.web.Application):
    """Tornado Application that tracks in-flight requests, so shutdown can drain them."""

    _open_requests = None

    @property
    def inflight(self):
        """Requests still being served to a connected client.

        A request whose client hung up mid-body (or was cut by body_timeout) never reaches
        log_request: counting it would make every shutdown wait the full drain time.
        """
        self._open_requests = {r for r in self._open_requests or () if _client_connected(r)}
        return len(self._open_requests)

    def find_handler(self, request, **kwargs):
        if self._open_requests is None:
            self._open_requests = set()
        self._open_requests.add(request)
        https_url = web.redirect_target(request, self.settings["config"])
        if https_url:
            return self.get_handler_delegate(request, web.HttpsRedirectHandler, {"url": https_url})
        return super().find_handler(request, **kwargs)

    def log_request(self, handler):
        if self._open_requests is not None:
            self._open_requests.discard(handler.request)
        super().log_request(handler)


def _client_connected(request):
    stream = getattr(request.connection, "stream", None)
    return stream is not None and not stream.closed()


def derive(secret_key, purpose):
    """A per-purpose key from PULSE_SECRET_KEY, so one secret never serves two uses."""
    return hmac.new(secret_key.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def make_app(config, **overrides):
    """Build the Tornado application for `config` and bind the database it names."""
    db.bind(config.database_url)
    security.configure_bcrypt(config.bcrypt_rounds)
    jinja_env = make_jinja_env(ROOT / "templates")
    jinja_env.globals["Outcome"] = Outcome  # templates name webhook outcomes as pulse/ does
    jinja_env.globals["Status"] = Status  # and subscription statuses
    routes = []
    for name in HANDLER_MODULES:
        routes.extend(importlib.import_module(name).default_handlers)
    settings = dict(
        config=config,
        secret_box=SecretBox(config.secret_key),
        jinja_env=jinja_env,
        cookie_secret=derive(config.secret_key, "cookies"),
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"httponly": True, "samesite": "Lax"},
        static_path=str(ROOT / "static"),
        static_url_prefix="/static/",
        static_handler_class=StaticFiles,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        rate_limiter=make_limiter(config),
        bcrypt_pool=security.BcryptPool(),
        compress_response=False,
    )
    settings.update(overrides)
    return PulseApplication(routes, transforms=[web.hsts_transform(config)], **settings)


# ---------------------------------------------------------------- CLI


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


def _emit(args, data, lines):
    if getattr(args, "json", False):
        print(json.dumps(data))
    else:
        for line in lines:
            print(line)


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


def cmd_migrate(config, args):
    applied = migrate_database()
    _emit(args, {"applied": applied}, [f"applied: {name}" for name in applied] or ["database is up to date"])


def cmd_create_project(config, args):
    if not args.name.strip() or len(args.name) > 200:
        raise CliError("project name must be 1-200 characters", status=2)
    if args.admin_email is None:
        if not args.sandbox:
            raise CliError("the following arguments are required: --admin-email", status=2)
        args.admin_email = SANDBOX_ADMIN
    try:
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
    _emit(args, data, lines)


def _project(project_id):
    try:
        return projects.get_project(project_id)
    except projects.NotFound:
        raise CliError(f"no project {project_id!r}", status=1) from None


def cmd_create_api_key(config, args):
    with db.block():
        project = _project(args.project_id)
        issued = apikeys.issue(project, label=args.label)
        projects.audit("api_key.created", project=project, actor="cli", key_id=issued.key_id, prefix=issued.prefix)
    _emit(
        args,
        {"api_key": issued.api_key, "key_id": issued.key_id, "prefix": issued.prefix},
        [f"api key: {issued.api_key}  (shown once)", f"key id: {issued.key_id}"],
    )


def cmd_set_stripe(config, args):
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
    _emit(
        args,
        {"project_id": project.public_id, "updated": changed},
        [f"{name} set to {masked}" for name, masked in changed.items()],
    )


def cmd_sync_stripe(config, args):
    from pulse import billing, resync

    with db.block():
        project = _project(args.project_id)
    progress = None if args.json else (lambda line: print(line, flush=True))

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
    _emit(
        args,
        dict(counts, project_id=project.public_id),
        [
            f"synced {counts['subscriptions']} subscription(s) of {counts['customers']} customer(s): "
            f"{counts['created']} created, {counts['updated']} updated, {counts['unchanged']} unchanged, "
            f"{counts['stale']} newer locally, {counts['unmatched']} without a customer, "
            f"{counts['skipped']} of other projects"
        ],
    )


COMMANDS = {
    "migrate": cmd_migrate,
    "create-project": cmd_create_project,
    "create-api-key": cmd_create_api_key,
    "set-stripe": cmd_set_stripe,
    "sync-stripe": cmd_sync_stripe,
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
        config = load_config()
        setup_logging(config.log_level)
        if args.command in (None, "serve"):
            overrides = {}
            if getattr(args, "host", None):
                overrides["host"] = args.host
            if getattr(args, "port", None) is not None:
                if not 0 <= args.port <= 65535:
                    raise CliError("--port must be between 0 and 65535", status=2)
                overrides["port"] = args.port
            config = load_config(**overrides) if overrides else config
            return serve(make_app, config, getattr(args, "processes", 1))
        db.bind(config.database_url)
        security.BCRYPT_ROUNDS = config.bcrypt_rounds
        if args.command != "migrate":
            migrate_database()
        if args.command == "worker":
            from pulse import inbox

            return inbox.main(config, SecretBox(config.secret_key))
        COMMANDS[args.command](config, args)
        return 0
    except CliError as exc:
        print(f"run.py: error: {exc}", file=sys.stderr)
        return exc.status
    except ConfigError as exc:
        print(f"run.py: configuration error: {exc}", file=sys.stderr)
        return 2
    except (db.DatabaseUnavailable, peewee.OperationalError, peewee.InterfaceError):
        print("run.py: error: the database is unreachable (check PULSE_DATABASE_URL)", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"run.py: error: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
