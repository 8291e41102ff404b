"""Every setting of SPEC 1: defaults, parsing, readable errors, the generated secret."""

import dataclasses
import ipaddress
import os
import stat

import pytest

from pulse.config import SETTINGS, TABLE, Config, ConfigError, RateLimit, load_config


def test_defaults(tmp_path):
    config = load_config(environ={"PULSE_DATABASE_URL": f"sqlite:///{tmp_path}/pulse.db"})
    assert (config.host, config.port) == ("127.0.0.1", 8000)
    assert config.force_https is True and config.trust_proxy is False
    assert config.rate_limit_authenticated == RateLimit(600, 60)
    assert config.rate_limit_anonymous == RateLimit(60, 60)
    assert config.redis_url is None and config.stripe_secret_key is None
    assert config.status_page_url == "/status" and config.log_level == "info"
    assert config.stripe_api_base == "https://api.stripe.com"
    assert [str(net) for net in config.trusted_proxies] == ["127.0.0.0/8", "::1/128"]


def test_the_table_fills_every_config_field_once():
    assert sorted(setting.field for setting in TABLE) == sorted(f.name for f in dataclasses.fields(Config))


def test_every_setting_is_read(tmp_path):
    env = {
        "PULSE_DATABASE_URL": "mysql://u:p@db:3306/pulse",
        "PULSE_HOST": "0.0.0.0",
        "PULSE_PORT": "9000",
        "PULSE_SECRET_KEY": "s" * 32,
        "PULSE_STRIPE_SECRET_KEY": "sk_test_x",
        "PULSE_STRIPE_WEBHOOK_SECRET": "whsec_x",
        "PULSE_STRIPE_API_BASE": "http://localhost:12111/",
        "PULSE_STRIPE_TIMEOUT": "2.5",
        "PULSE_STRIPE_MAX_RETRIES": "0",
        "PULSE_FORCE_HTTPS": "0",
        "PULSE_TRUST_PROXY": "yes",
        "PULSE_RATE_LIMIT_AUTHENTICATED": "10/second",
        "PULSE_RATE_LIMIT_ANONYMOUS": "5/hour",
        "PULSE_REDIS_URL": "redis://localhost:6379/1",
        "PULSE_STATUS_PAGE_URL": "https://status.example.com",
        "PULSE_LOG_LEVEL": "DEBUG",
        "PULSE_BCRYPT_ROUNDS": "10",
        "PULSE_TRUSTED_PROXIES": "10.0.0.0/8, 2001:db8::1",
        "PULSE_WEBHOOK_ALLOW_LOOPBACK": "1",
        "PULSE_WEBHOOK_ALLOW_PRIVATE": "on",
        "PULSE_WEBHOOK_TIMEOUT": "3",
        "PULSE_WEBHOOK_RETRY_BASE": "0.5",
        "PULSE_WEBHOOK_RETRY_FOR": "60",
        "PULSE_WEBHOOK_DISABLE_AFTER": "120",
        "PULSE_WEBHOOK_POLL": "0.2",
        "PULSE_WEBHOOK_APPLY": "Worker",
    }
    assert set(env) == set(SETTINGS)
    config = load_config(environ=env)
    assert config.database_url == "mysql://u:p@db:3306/pulse"
    assert (config.host, config.port, config.secret_key) == ("0.0.0.0", 9000, "s" * 32)
    assert (config.stripe_secret_key, config.stripe_webhook_secret) == ("sk_test_x", "whsec_x")
    assert config.stripe_api_base == "http://localhost:12111"
    assert (config.stripe_timeout, config.stripe_max_retries) == (2.5, 0)
    assert (config.force_https, config.trust_proxy) == (False, True)
    assert config.rate_limit_authenticated == RateLimit(10, 1)
    assert config.rate_limit_anonymous == RateLimit(5, 3600)
    assert config.redis_url == "redis://localhost:6379/1"
    assert config.status_page_url == "https://status.example.com"
    assert config.log_level == "debug"
    assert config.bcrypt_rounds == 10
    assert config.webhook_apply == "worker"
    assert config.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::1/128"))
    assert (config.webhook_allow_loopback, config.webhook_allow_private) == (True, True)
    assert (config.webhook_timeout, config.webhook_retry_base, config.webhook_retry_for) == (3.0, 0.5, 60.0)
    assert (config.webhook_disable_after, config.webhook_poll) == (120.0, 0.2)


@pytest.mark.parametrize(
    "name,value,needle",
    [
        ("PULSE_PORT", "abc", "PULSE_PORT must be a whole number"),
        ("PULSE_PORT", "70000", "PULSE_PORT must be between"),
        ("PULSE_FORCE_HTTPS", "maybe", "PULSE_FORCE_HTTPS must be 1 or 0"),
        ("PULSE_RATE_LIMIT_ANONYMOUS", "lots", "PULSE_RATE_LIMIT_ANONYMOUS must look like 600/minute"),
        ("PULSE_RATE_LIMIT_AUTHENTICATED", "0/minute", "must look like"),
        ("PULSE_DATABASE_URL", "postgres://x/y", "PULSE_DATABASE_URL must be"),
        ("PULSE_LOG_LEVEL", "loud", "PULSE_LOG_LEVEL must be one of"),
        ("PULSE_REDIS_URL", "localhost:6379", "PULSE_REDIS_URL must start with"),
        ("PULSE_STRIPE_API_BASE", "ftp://x", "PULSE_STRIPE_API_BASE must be"),
        ("PULSE_STRIPE_TIMEOUT", "0", "PULSE_STRIPE_TIMEOUT must be between"),
        ("PULSE_SECRET_KEY", "short", "at least 16"),
        ("PULSE_TRUSTED_PROXIES", "10.0.0.0/8,proxy.internal", "PULSE_TRUSTED_PROXIES must be comma-separated"),
        ("PULSE_TRUSTED_PROXIES", " , ", "PULSE_TRUSTED_PROXIES must name at least one"),
        ("PULSE_BCRYPT_ROUNDS", "3", "PULSE_BCRYPT_ROUNDS must be between 4 and 16"),
    ],
)
def test_bad_values_name_the_variable(tmp_path, name, value, needle):
    env = {"PULSE_DATABASE_URL": f"sqlite:///{tmp_path}/pulse.db", name: value}
    with pytest.raises(ConfigError) as info:
        load_config(environ=env)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_secret_key_generated_once_beside_the_database(tmp_path):
    env = {"PULSE_DATABASE_URL": f"sqlite:///{tmp_path}/data/pulse.db"}
    (tmp_path / "data").mkdir()
    first = load_config(environ=env).secret_key
    path = tmp_path / "data" / "pulse.secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(first) >= 32
    assert load_config(environ=env).secret_key == first
    other = tmp_path / "other"
    other.mkdir()
    assert load_config(environ={"PULSE_DATABASE_URL": f"sqlite:///{other}/pulse.db"}).secret_key != first


def test_env_secret_key_wins_and_writes_nothing(tmp_path):
    env = {"PULSE_DATABASE_URL": f"sqlite:///{tmp_path}/pulse.db", "PULSE_SECRET_KEY": "k" * 20}
    assert load_config(environ=env).secret_key == "k" * 20
    assert not (tmp_path / "pulse.secret").exists()
