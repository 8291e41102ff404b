"""PaymentPulse entry point: `make_app(config)` and `main()`, the command line of SPEC 1 (its commands: cli.py)."""

import hashlib
import hmac
import importlib
import json
import sys
from pathlib import Path

import peewee
import tornado.web

import web
from cli import COMMANDS, CliError, build_parser  # run.build_parser: the README test reads the CLI here
from console.base import make_jinja_env
from console.static import StaticFiles
from handlers.base import NotFoundHandler, log_request
from pulse import db, security
from pulse.config import ConfigError, load_config
from pulse.logs import setup_logging
from pulse.migrations import migrate_database
from pulse.outcomes import Outcome
from pulse.ratelimit import make_limiter
from pulse.security import SecretBox
from pulse.status import Status
from server import serve

ROOT = Path(__file__).resolve().parent

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
    "sandbox.stripe_api",
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


def _emit(args, data, lines):
    if getattr(args, "json", False):
        print(json.dumps(data))
    else:
        for line in lines:
            print(line)


def main(argv=None):
    """Run the command line on `argv` (default sys.argv[1:]) -> exit status: 0, 1 failed, 2 usage or configuration."""
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
        data, lines = COMMANDS[args.command](config, args, lambda line: print(line, flush=True))
        _emit(args, data, lines)
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
