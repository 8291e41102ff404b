"""Settings from the environment (SPEC 1), validated into one immutable Config."""

import ipaddress
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_DATABASE_URL = "sqlite:///pulse.db"
STRIPE_API_BASE = "https://api.stripe.com"
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A setting has a value we cannot use; the message names the variable."""


@dataclass(frozen=True)
class RateLimit:
    """`limit` requests in any `window` seconds."""

    limit: int
    window: int

    def __str__(self) -> str:
        unit = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}[self.window]
        return f"{self.limit}/{unit}"


Parser = Callable[[str, str], Any]
Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

_UNITS = {
    "second": 1,
    "sec": 1,
    "s": 1,
    "minute": 60,
    "min": 60,
    "m": 60,
    "hour": 3600,
    "h": 3600,
    "day": 86400,
    "d": 86400,
}


def parse_text(name: str, value: str) -> str:
    """Any non-empty text, as given."""
    return value


def parse_bool(name: str, value: str) -> bool:
    """Read 1/0, true/false, yes/no, on/off."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0 (got {value!r})")


def parse_int(name: str, value: str, low: int, high: int) -> int:
    """Read an integer within [low, high]."""
    try:
        number = int(value.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a whole number (got {value!r})") from None
    if not low <= number <= high:
        raise ConfigError(f"{name} must be between {low} and {high} (got {number})")
    return number


def parse_float(name: str, value: str, low: float, high: float) -> float:
    """Read a number within [low, high]."""
    try:
        number = float(value.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number (got {value!r})") from None
    if not low <= number <= high:
        raise ConfigError(f"{name} must be between {low} and {high} (got {number})")
    return number


def parse_rate(name: str, value: str) -> RateLimit:
    """Read `N/unit` such as `600/minute` or `10/s`."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*([a-z]+)\s*", value.lower())
    if not match or match.group(2) not in _UNITS or int(match.group(1)) < 1:
        raise ConfigError(f"{name} must look like 600/minute (got {value!r})")
    return RateLimit(int(match.group(1)), _UNITS[match.group(2)])


def parse_http_url(name: str, value: str) -> str:
    """An http(s) base URL, without a trailing slash."""
    base = value.rstrip("/")
    if not re.match(r"https?://[^/\s]+", base):
        raise ConfigError(f"{name} must be an http(s) URL (got {base!r})")
    return base


def parse_redis_url(name: str, value: str) -> str:
    """A redis://, rediss:// or unix:// URL."""
    if not re.match(r"rediss?://|unix://", value):
        raise ConfigError(f"{name} must start with redis://, rediss:// or unix://")
    return value


WEBHOOK_APPLY_MODES = ("inline", "worker")


def parse_webhook_apply(name: str, value: str) -> str:
    """One of WEBHOOK_APPLY_MODES."""
    mode = value.strip().lower()
    if mode not in WEBHOOK_APPLY_MODES:
        raise ConfigError(f"{name} must be one of {', '.join(WEBHOOK_APPLY_MODES)} (got {mode!r})")
    return mode


def parse_log_level(name: str, value: str) -> str:
    """One of LOG_LEVELS, any case."""
    level = value.lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"{name} must be one of {', '.join(LOG_LEVELS)} (got {level!r})")
    return level


def parse_networks(name: str, value: str) -> Networks:
    """Comma-separated IP addresses or CIDR networks (host bits allowed), IPv4 or IPv6."""
    networks = []
    for item in value.split(","):
        if not item.strip():
            continue
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ConfigError(
                f"{name} must be comma-separated addresses or networks such as 10.0.0.0/8 (got {item.strip()!r})"
            ) from None
    if not networks:
        raise ConfigError(f"{name} must name at least one address or network")
    return tuple(networks)


def _between(parse: Callable[[str, str, Any, Any], Any], low: Any, high: Any) -> Parser:
    return lambda name, value: parse(name, value, low, high)


def parse_database_url(name: str, value: str) -> str:
    """Accept the sqlite and mysql URLs we support."""
    scheme = value.split(":", 1)[0].lower()
    if scheme not in ("sqlite", "mysql") or "://" not in value:
        raise ConfigError(f"{name} must be sqlite:///path or mysql://user:pass@host:3306/db (got scheme {scheme!r})")
    return value


def sqlite_path(database_url: str) -> Path | None:
    """The file of a sqlite URL, or None for MySQL and in-memory databases."""
    if not database_url.startswith("sqlite:///"):
        return None
    path = database_url[len("sqlite:///") :].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def load_secret_key(env_value: str | None, database_url: str) -> str:
    """PULSE_SECRET_KEY, else the key in pulse.secret beside the SQLite db, made once."""
    if env_value:
        if len(env_value) < 16:
            raise ConfigError("PULSE_SECRET_KEY must be at least 16 characters")
        return env_value
    db_file = sqlite_path(database_url)
    path = (db_file.parent if db_file else Path(".")) / "pulse.secret"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            # As ssh does with a private key: a secret others can read is not a secret (L9).
            raise ConfigError(f"{path} is readable by other users (mode {mode:04o}); run: chmod 600 {path}") from None
        key = path.read_text().strip()
        if len(key) < 16:
            raise ConfigError(f"{path} is empty or too short; delete it or set PULSE_SECRET_KEY") from None
        return key
    except OSError as exc:
        raise ConfigError(f"cannot create {path} ({exc.strerror}); set PULSE_SECRET_KEY") from None
    key = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


@dataclass(frozen=True)
class Setting:
    """One environment variable: the Config field it fills, its default, its parser and its README line."""

    name: str
    field: str
    default: Any
    parse: Parser | None  # None: read by a special rule in load_config (PULSE_SECRET_KEY)
    help: str
    shown_default: str | None = None  # when the default is not a value (generated, derived)

    def default_text(self) -> str:
        """The default as written in the README table and `--help`: `1`/`0`, `unset`, `20`, `600/minute`."""
        value = self.default
        if self.shown_default is not None:
            return self.shown_default
        if value is None:
            return "unset"
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, float):
            return f"{value:g}"
        if isinstance(value, tuple):
            return ",".join(str(item) for item in value)
        return str(value)


# The one list of settings (SPEC 1): load_config reads it, the README test and `run.py --help` list it.
# Parsers get (variable name, non-empty raw value) and raise ConfigError naming the variable.
# Kept one setting per entry so it reads as a table: not reformatted.
# fmt: off
TABLE: tuple[Setting, ...] = (
    Setting("PULSE_DATABASE_URL", "database_url", DEFAULT_DATABASE_URL, parse_database_url,
            "sqlite:///path/to.db or mysql://user:pass@host:3306/db"),
    Setting("PULSE_HOST", "host", "127.0.0.1", parse_text, "listen address (also --host)"),
    Setting("PULSE_PORT", "port", 8000, _between(parse_int, 0, 65535), "listen port (also --port)"),
    Setting("PULSE_SECRET_KEY", "secret_key", None, None,
            "signs cookies and encrypts stored Stripe secrets (at least 16 characters)",
            shown_default="generated once into pulse.secret"),
    Setting("PULSE_STRIPE_SECRET_KEY", "stripe_secret_key", None, parse_text,
            "deployment-wide Stripe secret key, for projects that have none of their own"),
    Setting("PULSE_STRIPE_WEBHOOK_SECRET", "stripe_webhook_secret", None, parse_text,
            "signing secret (whsec_...) of the deployment-wide endpoint POST /api/webhook"),
    Setting("PULSE_STRIPE_API_BASE", "stripe_api_base", STRIPE_API_BASE, parse_http_url,
            "base URL for Stripe API calls"),
    Setting("PULSE_STRIPE_TIMEOUT", "stripe_timeout", 20.0, _between(parse_float, 0.1, 120),
            "seconds before a Stripe call is abandoned"),
    Setting("PULSE_STRIPE_MAX_RETRIES", "stripe_max_retries", 2, _between(parse_int, 0, 10),
            "retries of a Stripe call on network errors"),
    Setting("PULSE_FORCE_HTTPS", "force_https", True, parse_bool, "redirect plain-HTTP requests to HTTPS"),
    Setting("PULSE_TRUST_PROXY", "trust_proxy", False, parse_bool,
            "honour X-Forwarded-For / X-Forwarded-Proto from a reverse proxy"),
    Setting("PULSE_TRUSTED_PROXIES", "trusted_proxies", parse_networks("default", "127.0.0.0/8,::1/128"),
            parse_networks, "addresses or CIDR networks of the reverse proxies whose forwarding headers count"),
    Setting("PULSE_RATE_LIMIT_AUTHENTICATED", "rate_limit_authenticated", RateLimit(600, 60), parse_rate,
            "requests per project in any window (N/second, N/minute, N/hour, N/day)"),
    Setting("PULSE_RATE_LIMIT_ANONYMOUS", "rate_limit_anonymous", RateLimit(60, 60), parse_rate,
            "unauthenticated and failed-auth requests per client address"),
    Setting("PULSE_REDIS_URL", "redis_url", None, parse_redis_url, "rate-limit counters shared by every process"),
    Setting("PULSE_STATUS_PAGE_URL", "status_page_url", "/status", parse_text,
            "where GET /api/health sends browsers"),
    Setting("PULSE_LOG_LEVEL", "log_level", "info", parse_log_level, "debug, info, warning or error"),
    Setting("PULSE_BCRYPT_ROUNDS", "bcrypt_rounds", 12, _between(parse_int, 4, 16),
            "bcrypt cost of console passwords (4 to 16)"),
    Setting("PULSE_WEBHOOK_ALLOW_LOOPBACK", "webhook_allow_loopback", False, parse_bool,
            "outgoing webhooks may target loopback addresses, over http too (development only)"),
    Setting("PULSE_WEBHOOK_ALLOW_PRIVATE", "webhook_allow_private", False, parse_bool,
            "outgoing webhooks may target private and link-local addresses (refused by default: SSRF)"),
    Setting("PULSE_WEBHOOK_TIMEOUT", "webhook_timeout", 10.0, _between(parse_float, 0.1, 60),
            "seconds an outgoing webhook delivery may take before it counts as failed"),
    Setting("PULSE_WEBHOOK_RETRY_BASE", "webhook_retry_base", 5.0, _between(parse_float, 0.01, 3600),
            "seconds before the first retry of a failed outgoing webhook; doubles per attempt, up to 6 hours"),
    Setting("PULSE_WEBHOOK_RETRY_FOR", "webhook_retry_for", 259200.0, _between(parse_float, 1, 30 * 86400),
            "seconds an outgoing webhook is retried before it is marked failed (default 3 days)"),
    Setting("PULSE_WEBHOOK_DISABLE_AFTER", "webhook_disable_after", 259200.0, _between(parse_float, 1, 30 * 86400),
            "seconds of failures without one success after which an endpoint is disabled (default 3 days)"),
    Setting("PULSE_WEBHOOK_POLL", "webhook_poll", 1.0, _between(parse_float, 0.05, 60),
            "seconds between outbox polls of each process (new messages of this process go out at once)"),
    Setting("PULSE_WEBHOOK_APPLY", "webhook_apply", "inline", parse_webhook_apply,
            "inline: apply each webhook before answering; worker: answer once stored, `run.py worker` applies"),
)
# fmt: on

# Every variable load_config() reads; the README test checks each one is documented.
SETTINGS: tuple[str, ...] = tuple(setting.name for setting in TABLE)
_DEFAULTS: dict[str, Any] = {setting.field: setting.default for setting in TABLE}


@dataclass(frozen=True)
class Config:
    """Every setting PaymentPulse reads (defaults and meaning in TABLE); build it with `load_config()`."""

    database_url: str = _DEFAULTS["database_url"]
    host: str = _DEFAULTS["host"]
    port: int = _DEFAULTS["port"]
    secret_key: str = field(default="", repr=False)
    stripe_secret_key: str | None = field(default=_DEFAULTS["stripe_secret_key"], repr=False)
    stripe_webhook_secret: str | None = field(default=_DEFAULTS["stripe_webhook_secret"], repr=False)
    stripe_api_base: str = _DEFAULTS["stripe_api_base"]
    stripe_timeout: float = _DEFAULTS["stripe_timeout"]
    stripe_max_retries: int = _DEFAULTS["stripe_max_retries"]
    force_https: bool = _DEFAULTS["force_https"]
    trust_proxy: bool = _DEFAULTS["trust_proxy"]
    trusted_proxies: Networks = _DEFAULTS["trusted_proxies"]
    rate_limit_authenticated: RateLimit = _DEFAULTS["rate_limit_authenticated"]
    rate_limit_anonymous: RateLimit = _DEFAULTS["rate_limit_anonymous"]
    redis_url: str | None = _DEFAULTS["redis_url"]
    status_page_url: str = _DEFAULTS["status_page_url"]
    log_level: str = _DEFAULTS["log_level"]
    bcrypt_rounds: int = _DEFAULTS["bcrypt_rounds"]
    webhook_allow_loopback: bool = _DEFAULTS["webhook_allow_loopback"]
    webhook_allow_private: bool = _DEFAULTS["webhook_allow_private"]
    webhook_timeout: float = _DEFAULTS["webhook_timeout"]
    webhook_retry_base: float = _DEFAULTS["webhook_retry_base"]
    webhook_retry_for: float = _DEFAULTS["webhook_retry_for"]
    webhook_disable_after: float = _DEFAULTS["webhook_disable_after"]
    webhook_poll: float = _DEFAULTS["webhook_poll"]
    webhook_apply: str = _DEFAULTS["webhook_apply"]


def describe() -> str:
    """One line per setting, `NAME (default): help`, for `run.py --help`."""
    return "\n".join(f"  {setting.name} ({setting.default_text()}): {setting.help}" for setting in TABLE)


def load_config(environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
    """Build the Config from environment variables (TABLE); raise ConfigError on a bad value.

    An unset or empty variable takes its default. `overrides` (Config field names) win over the
    environment; the CLI's --host/--port and the tests use them.
    """
    env = os.environ if environ is None else environ
    values = {}
    for setting in TABLE:
        raw = env.get(setting.name)
        if setting.parse is not None and raw not in (None, ""):
            values[setting.field] = setting.parse(setting.name, raw)
    values.update(overrides)
    database_url = values.get("database_url", DEFAULT_DATABASE_URL)
    db_file = sqlite_path(database_url)
    if db_file is not None and not db_file.parent.is_dir():
        # SQLite creates the file, never its directory: say so, not "unable to open database file".
        raise ConfigError(
            f"the directory {db_file.parent} of the SQLite database in PULSE_DATABASE_URL does not exist;"
            f" create it first (mkdir -p {db_file.parent})"
        )
    if "secret_key" not in values:
        values["secret_key"] = load_secret_key(env.get("PULSE_SECRET_KEY") or None, database_url)
    return Config(**values)
