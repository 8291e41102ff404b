"""Settings from the environment (SPEC 1), validated into one immutable Config."""

import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

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

    def __str__(self):
        unit = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}[self.window]
        return f"{self.limit}/{unit}"


@dataclass(frozen=True)
class Config:
    """Every setting PaymentPulse reads; build it with `load_config()`."""

    database_url: str = DEFAULT_DATABASE_URL
    host: str = "127.0.0.1"
    port: int = 8000
    secret_key: str = field(default="", repr=False)
    stripe_secret_key: str | None = field(default=None, repr=False)
    stripe_webhook_secret: str | None = field(default=None, repr=False)
    stripe_api_base: str = STRIPE_API_BASE
    stripe_timeout: float = 20.0
    stripe_max_retries: int = 2
    force_https: bool = True
    trust_proxy: bool = False
    rate_limit_authenticated: RateLimit = RateLimit(600, 60)
    rate_limit_anonymous: RateLimit = RateLimit(60, 60)
    redis_url: str | None = None
    status_page_url: str = "/status"
    log_level: str = "info"
    bcrypt_rounds: int = 12


# Every variable load_config() reads; the README test checks each one is documented.
SETTINGS = (
    "PULSE_DATABASE_URL", "PULSE_HOST", "PULSE_PORT", "PULSE_SECRET_KEY",
    "PULSE_STRIPE_SECRET_KEY", "PULSE_STRIPE_WEBHOOK_SECRET", "PULSE_STRIPE_API_BASE",
    "PULSE_STRIPE_TIMEOUT", "PULSE_STRIPE_MAX_RETRIES", "PULSE_FORCE_HTTPS",
    "PULSE_TRUST_PROXY", "PULSE_RATE_LIMIT_AUTHENTICATED", "PULSE_RATE_LIMIT_ANONYMOUS",
    "PULSE_REDIS_URL", "PULSE_STATUS_PAGE_URL", "PULSE_LOG_LEVEL", "PULSE_BCRYPT_ROUNDS",
)

_UNITS = {"second": 1, "sec": 1, "s": 1, "minute": 60, "min": 60, "m": 60,
          "hour": 3600, "h": 3600, "day": 86400, "d": 86400}


def parse_bool(name, value):
    """Read 1/0, true/false, yes/no, on/off."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0 (got {value!r})")


def parse_int(name, value, low, high):
    """Read an integer within [low, high]."""
    try:
        number = int(value.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a whole number (got {value!r})") from None
    if not low <= number <= high:
        raise ConfigError(f"{name} must be between {low} and {high} (got {number})")
    return number


def parse_float(name, value, low, high):
    """Read a number within [low, high]."""
    try:
        number = float(value.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number (got {value!r})") from None
    if not low <= number <= high:
        raise ConfigError(f"{name} must be between {low} and {high} (got {number})")
    return number


def parse_rate(name, value):
    """Read `N/unit` such as `600/minute` or `10/s`."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*([a-z]+)\s*", value.lower())
    if not match or match.group(2) not in _UNITS or int(match.group(1)) < 1:
        raise ConfigError(f"{name} must look like 600/minute (got {value!r})")
    return RateLimit(int(match.group(1)), _UNITS[match.group(2)])


def parse_database_url(name, value):
    """Accept the sqlite and mysql URLs we support."""
    scheme = value.split(":", 1)[0].lower()
    if scheme not in ("sqlite", "mysql") or "://" not in value:
        raise ConfigError(f"{name} must be sqlite:///path or mysql://user:pass@host:3306/db (got scheme {scheme!r})")
    return value


def sqlite_path(database_url):
    """The file of a sqlite URL, or None for MySQL and in-memory databases."""
    if not database_url.startswith("sqlite:///"):
        return None
    path = database_url[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def load_secret_key(env_value, database_url):
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
            raise ConfigError(f"{path} is readable by other users (mode {mode:04o}); "
                              f"run: chmod 600 {path}") from None
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


def load_config(environ=None, **overrides):
    """Build the Config from environment variables; raise ConfigError on a bad value."""
    env = os.environ if environ is None else environ

    def get(name):
        value = env.get(name)
        return value if value not in (None, "") else None

    values = {}
    if get("PULSE_DATABASE_URL"):
        values["database_url"] = parse_database_url("PULSE_DATABASE_URL", get("PULSE_DATABASE_URL"))
    if get("PULSE_HOST"):
        values["host"] = get("PULSE_HOST")
    if get("PULSE_PORT"):
        values["port"] = parse_int("PULSE_PORT", get("PULSE_PORT"), 0, 65535)
    values["stripe_secret_key"] = get("PULSE_STRIPE_SECRET_KEY")
    values["stripe_webhook_secret"] = get("PULSE_STRIPE_WEBHOOK_SECRET")
    if get("PULSE_STRIPE_API_BASE"):
        base = get("PULSE_STRIPE_API_BASE").rstrip("/")
        if not re.match(r"https?://[^/\s]+", base):
            raise ConfigError(f"PULSE_STRIPE_API_BASE must be an http(s) URL (got {base!r})")
        values["stripe_api_base"] = base
    if get("PULSE_STRIPE_TIMEOUT"):
        values["stripe_timeout"] = parse_float("PULSE_STRIPE_TIMEOUT", get("PULSE_STRIPE_TIMEOUT"), 0.1, 120)
    if get("PULSE_STRIPE_MAX_RETRIES"):
        values["stripe_max_retries"] = parse_int("PULSE_STRIPE_MAX_RETRIES", get("PULSE_STRIPE_MAX_RETRIES"), 0, 10)
    if get("PULSE_FORCE_HTTPS"):
        values["force_https"] = parse_bool("PULSE_FORCE_HTTPS", get("PULSE_FORCE_HTTPS"))
    if get("PULSE_TRUST_PROXY"):
        values["trust_proxy"] = parse_bool("PULSE_TRUST_PROXY", get("PULSE_TRUST_PROXY"))
    for key in ("authenticated", "anonymous"):
        name = f"PULSE_RATE_LIMIT_{key.upper()}"
        if get(name):
            values[f"rate_limit_{key}"] = parse_rate(name, get(name))
    if get("PULSE_REDIS_URL"):
        url = get("PULSE_REDIS_URL")
        if not re.match(r"rediss?://|unix://", url):
            raise ConfigError("PULSE_REDIS_URL must start with redis://, rediss:// or unix://")
        values["redis_url"] = url
    if get("PULSE_STATUS_PAGE_URL"):
        values["status_page_url"] = get("PULSE_STATUS_PAGE_URL")
    if get("PULSE_LOG_LEVEL"):
        level = get("PULSE_LOG_LEVEL").lower()
        if level not in LOG_LEVELS:
            raise ConfigError(f"PULSE_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)} (got {level!r})")
        values["log_level"] = level
    if get("PULSE_BCRYPT_ROUNDS"):
        values["bcrypt_rounds"] = parse_int("PULSE_BCRYPT_ROUNDS", get("PULSE_BCRYPT_ROUNDS"), 4, 16)
    values.update(overrides)
    database_url = values.get("database_url", DEFAULT_DATABASE_URL)
    if "secret_key" not in values:
        values["secret_key"] = load_secret_key(get("PULSE_SECRET_KEY"), database_url)
    return Config(**values)
