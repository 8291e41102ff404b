"""Projects, admin accounts, memberships, Stripe credentials and the audit log."""

import json
import re
import time
import unicodedata
from dataclasses import dataclass
from typing import Any

from pulse import apikeys, emails, security
from pulse.config import Config
from pulse.db import block, database, transaction, utcnow
from pulse.models import AuditLog, Membership, Project, User
from pulse.security import SecretBox

SANDBOX_KEY_PREFIX = "sk_test_sandbox_"


class SandboxRule(ValueError):
    """A change that would let a sandbox project reach real Stripe, or a live project the simulator."""


class NotFound(LookupError):
    """No such project (or user)."""


class Refused(ValueError):
    """A value breaks one of the rules below; the message says which, for a person to read."""


# One password rule for every way an admin password is set (CLI, console). bcrypt takes 72 bytes at
# most (bcrypt 5 refuses more; older versions silently truncated).
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_BYTES = 72
# Stripe secret keys are `sk_live_…`/`sk_test_…` or restricted `rk_…`; signing secrets `whsec_…`.
STRIPE_KEY_PREFIXES = ("sk_live_", "sk_test_", "rk_live_", "rk_test_")
WEBHOOK_SECRET_PREFIX = "whsec_"
_SECRET_CHARS = re.compile(r"[0-9A-Za-z_]{8,250}")


@dataclass(frozen=True)
class NewProject:
    """What create_project made; `admin_password` is the generated one, to show once."""

    project: Project
    api_key: apikeys.IssuedKey
    admin: User
    admin_password: str | None  # only when we generated it


def normalize_email(email: str) -> str:
    """The identity key of an account's email: NFKC, trimmed, case-folded (pulse.emails.key)."""
    return emails.key(email)


def validate_admin_password(password: str, what: str = "The password") -> None:
    """Raise Refused unless `password` has 10+ characters and at most 72 UTF-8 bytes (bcrypt's limit)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise Refused(f"{what} must be at least {MIN_PASSWORD_LENGTH} characters.")
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise Refused(f"{what} must be at most {MAX_PASSWORD_BYTES} bytes.")


def validate_stripe_secrets(secret_key: str | None = None, webhook_secret: str | None = None) -> None:
    """Raise Refused unless each given value has the shape of a Stripe secret key / signing secret.

    Only the shape is checked (prefix, then letters, digits and `_`): whether Stripe accepts the key
    is the console's "check connection". None means "not given" and passes.
    """
    if secret_key is not None and not (
        secret_key.startswith(STRIPE_KEY_PREFIXES) and _SECRET_CHARS.fullmatch(secret_key)
    ):
        raise Refused("The secret key must be a Stripe secret key (sk_live_…, sk_test_… or rk_…).")
    if webhook_secret is not None and not (
        webhook_secret.startswith(WEBHOOK_SECRET_PREFIX) and _SECRET_CHARS.fullmatch(webhook_secret)
    ):
        raise Refused("The webhook secret must be a Stripe signing secret (whsec_…).")


def sandbox_admin_email(public_id: str) -> str:
    """The default admin of a sandbox project: one account per project, so sandboxes never share a login."""
    return f"admin+{public_id.lower()}@sandbox.test"


def validate_admin_email(email: str | None) -> None:
    """Raise Refused unless `email` is a valid address (pulse.emails.is_valid)."""
    if not emails.is_valid((email or "").strip()):
        raise Refused(f"{email!r} is not a valid email address.")


def find_user(email: str) -> User | None:
    """The account whose key is `email`'s key, or None. Call inside a db block."""
    return User.get_or_none(User.email_key == normalize_email(email))


def look_alike_of(email: str) -> User | None:
    """An account whose address reads the same as `email` but is another key, or None."""
    wanted, skeleton = normalize_email(email), emails.skeleton(email)
    for user in User.select(User.id, User.email, User.email_key).where(User.email_key.is_null(False)):
        if user.email_key != wanted and emails.skeleton(user.email_key) == skeleton:
            return user
    return None


def audit(
    action: str,
    *,
    project: Project | None = None,
    user: User | None = None,
    actor: str | None = None,
    ip: str | None = None,
    **detail: Any,
) -> None:
    """Record who did what; `detail` never carries secrets (callers pass masked values)."""
    AuditLog.create(
        project=project,
        user=user,
        actor=actor or (user.email if user else "system"),
        action=action,
        ip=ip,
        detail=json.dumps(detail, sort_keys=True, default=str),
    )


def get_project(public_id: str) -> Project:
    """The project with this public id; raises NotFound."""
    project = Project.get_or_none(Project.public_id == public_id)
    if project is None:
        raise NotFound(public_id)
    return project


def create_project(
    name: str,
    admin_email: str,
    box: SecretBox,
    *,
    admin_password: str | None = None,
    stripe_secret_key: str | None = None,
    stripe_webhook_secret: str | None = None,
    actor: str = "cli",
    sandbox: bool = False,
) -> NewProject:
    """Create a project with its first API key and its admin (new, or an existing account).

    The admin is the account with the same email key (NFKC, case-folded). Raises Refused for an
    invalid email, password or Stripe secret, and for an address that only looks like an existing
    account's (`vïctim@` beside `victim@`): such an address never gets an account of its own.
    `sandbox`: its Stripe is the built-in simulator, with generated credentials (SPEC 8); raises
    SandboxRule if Stripe credentials are also given, or a live project is given a simulator key. A
    sandbox project without `admin_email` gets an account of its own (sandbox_admin_email), never a shared one.
    """
    public_id = security.public_id("proj")
    if admin_email is None and sandbox:
        with transaction():
            while find_user(sandbox_admin_email(public_id)) is not None:  # ids differing only in case
                public_id = security.public_id("proj")
        admin_email = sandbox_admin_email(public_id)
    if sandbox and (stripe_secret_key or stripe_webhook_secret):
        raise SandboxRule("a sandbox project uses the built-in simulator: it takes no Stripe keys")
    if sandbox_project_of(stripe_secret_key):
        raise SandboxRule("a simulator key (sk_test_sandbox_…) belongs to a sandbox project")
    validate_admin_email(admin_email)
    if admin_password is not None:
        validate_admin_password(admin_password, "The admin password")
    validate_stripe_secrets(stripe_secret_key, stripe_webhook_secret)
    email = normalize_email(admin_email)
    generated = None
    with transaction():
        user = find_user(email)
        if user is None:
            typed = admin_email.strip()
            if unicodedata.normalize("NFKC", typed) != typed:
                # Full-width and other compatibility forms are how look-alikes are typed; a new
                # account is only ever made from the plain form, which an operator can read.
                raise Refused(f"{typed!r} contains full-width or compatibility characters; write it as {email!r}.")
            twin = look_alike_of(email)
            if twin is not None:
                raise Refused(
                    f"{admin_email.strip()!r} looks like the existing account {twin.email!r}; "
                    "use that exact address or another one."
                )
            if admin_password is None:
                admin_password = generated = security.generate_password()
            user = User.create(email=email, email_key=email, password_hash=security.hash_password(admin_password))
        if sandbox:
            stripe_secret_key = new_sandbox_secret_key(public_id)
            stripe_webhook_secret = "whsec_" + security.random_base62(32)
        project = Project.create(
            public_id=public_id,
            name=name.strip(),
            sandbox=sandbox,
            stripe_secret_key=box.encrypt(stripe_secret_key),
            stripe_webhook_secret=box.encrypt(stripe_webhook_secret),
        )
        Membership.create(user=user, project=project)
        key = apikeys.issue(project, label="default")
        audit("project.created", project=project, actor=actor, name=project.name, admin=email, sandbox=sandbox)
        audit("api_key.created", project=project, actor=actor, key_id=key.key_id, prefix=key.prefix)
    return NewProject(project=project, api_key=key, admin=user, admin_password=generated)


def set_stripe(
    project: Project,
    box: SecretBox,
    *,
    secret_key: str | None = None,
    webhook_secret: str | None = None,
    actor: str = "cli",
    user: User | None = None,
    ip: str | None = None,
) -> dict[str, str]:
    """Store new Stripe credentials (encrypted), None leaving a value as it is; returns {field: masked new value}.

    Raises Refused for a bad shape, SandboxRule for any change to a sandbox project's credentials
    (the simulator's own), and for a simulator key on a live project (SPEC 8).
    """
    if project.sandbox and (secret_key is not None or webhook_secret is not None):
        raise SandboxRule("a sandbox project's Stripe is the built-in simulator: its keys cannot be changed")
    if sandbox_project_of(secret_key):
        raise SandboxRule("a simulator key (sk_test_sandbox_…) belongs to a sandbox project")
    validate_stripe_secrets(secret_key, webhook_secret)
    changed: dict[str, str] = {}
    if secret_key is not None:
        project.stripe_secret_key = box.encrypt(secret_key)
        changed["stripe_secret_key"] = security.mask_secret(secret_key)
    if webhook_secret is not None:
        project.stripe_webhook_secret = box.encrypt(webhook_secret)
        changed["stripe_webhook_secret"] = security.mask_secret(webhook_secret)
    if changed:
        project.updated_at = utcnow()
        project.save()
        apikeys.invalidate(project.id)  # cached key lookups carry the project row
        audit("settings.stripe_updated", project=project, actor=actor, user=user, ip=ip, **changed)
    return changed


# Webhook deliveries name their project by public id. A burst is hundreds a second, each a round
# trip on the serving loop: a lookup is reused for ROUTE_TTL while nothing was written through this
# process (a change made here shows at once, one made elsewhere within the second).
ROUTE_TTL = 1.0
_routes: dict[tuple[int, str], tuple[float, int, Project]] = {}


def for_delivery(public_id: str) -> Project | None:
    """The project with `public_id` for a webhook delivery, or None; opens its own db block when it must read."""
    db = database.obj
    slot = (id(db), public_id)
    hit, now = _routes.get(slot), time.monotonic()
    if hit is not None and hit[0] > now and hit[1] == db.write_generation():
        return hit[2]
    with block():
        generation = db.write_generation()
        project = Project.get_or_none(Project.public_id == public_id)
    if project is not None:
        if len(_routes) >= 1000:
            _routes.clear()
        _routes[slot] = (now + ROUTE_TTL, generation, project)
    return project


def stripe_secret_key(project: Project, box: SecretBox, default: str | None = None) -> str | None:
    """The project's Stripe secret key, else the deployment-wide one (never for a sandbox project, SPEC 8).

    The key decides where calls go (billing.api_base_for): a sandbox project only ever has its simulator
    key, and a live project never has one, so neither can reach the other's Stripe.
    """
    key = box.decrypt(project.stripe_secret_key)
    if project.sandbox:
        return key if sandbox_project_of(key) == project.public_id else None
    key = key or default
    return None if sandbox_project_of(key) else key


def new_sandbox_secret_key(public_id: str) -> str:
    """`sk_test_sandbox_<project id>_<random>`: the simulator's key of one sandbox project."""
    return f"{SANDBOX_KEY_PREFIX}{public_id}_{security.random_base62(32)}"


def sandbox_project_of(secret_key: str | None) -> str | None:
    """The sandbox project a Stripe key belongs to, or None for any other key."""
    if not secret_key or not secret_key.startswith(SANDBOX_KEY_PREFIX):
        return None
    return secret_key[len(SANDBOX_KEY_PREFIX) :].rpartition("_")[0] or None


def local_base(config: Config) -> str:
    """This server's own loopback URL (the simulator's API base and its webhook target)."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(config.host, config.host)
    return f"http://[{host}]:{config.port}" if ":" in host else f"http://{host}:{config.port}"


def webhook_secret(project: Project, box: SecretBox) -> str | None:
    """The project's webhook signing secret, or None."""
    return box.decrypt(project.stripe_webhook_secret)


def projects_of(user: User) -> list[Project]:
    """Projects `user` may administer, by name."""
    return list(Project.select().join(Membership).where(Membership.user == user).order_by(Project.name))


def is_member(user: User, project: Project) -> bool:
    """True when `user` belongs to `project`."""
    return Membership.select().where(Membership.user == user, Membership.project == project).exists()


def set_past_due_policy(project: Project, allowed: bool, *, user: User | None = None, ip: str | None = None) -> bool:
    """Whether past-due subscriptions keep access (SPEC: the project's setting); audited. Returns True if changed."""
    allowed = bool(allowed)
    if allowed == project.past_due_has_access:
        return False
    project.past_due_has_access = allowed
    project.updated_at = utcnow()
    with database.atomic():  # the setting and the subscription.updated messages it causes: one transaction
        project.save()
        audit("settings.past_due_policy", project=project, user=user, ip=ip, past_due_has_access=allowed)
        _announce_policy(project)
    apikeys.invalidate(project.id)  # cached key lookups carry the project row, and with it the policy
    return True


def set_paused_collection_policy(
    project: Project, allowed: bool, *, actor: str | None = None, user: User | None = None, ip: str | None = None
) -> bool:
    """Whether subscriptions with paused payment collection keep access (SPEC 3.3); audited. Returns True if changed."""
    if bool(allowed) == bool(project.paused_collection_has_access):
        return False
    project.paused_collection_has_access = bool(allowed)
    project.updated_at = utcnow()
    with database.atomic():
        project.save()
        audit(
            "settings.paused_collection_policy",
            project=project,
            actor=actor,
            user=user,
            ip=ip,
            paused_collection_has_access=bool(allowed),
        )
        _announce_policy(project)
    apikeys.invalidate(project.id)  # cached key lookups carry the project row
    return True


def _announce_policy(project: Project) -> None:
    """A policy change can move has_access of many customers: each one whose answer moved hears of it (pulse.fanout)."""
    from pulse import fanout
    from pulse.models import Subscription

    where = (Subscription.project == project) & (
        (Subscription.status == "past_due") | Subscription.pause_behavior.is_null(False)
    )
    fanout.announce(project, fanout.collect(where))
