"""Projects, admin accounts, memberships, Stripe credentials and the audit log."""

import json
from dataclasses import dataclass

from pulse import apikeys, security
from pulse.db import database, utcnow
from pulse.models import AuditLog, Membership, Project, User


class NotFound(LookupError):
    """No such project (or user)."""


@dataclass(frozen=True)
class NewProject:
    project: Project
    api_key: apikeys.IssuedKey
    admin: User
    admin_password: str | None  # only when we generated it


def normalize_email(email):
    """Emails compare case-insensitively and without surrounding space."""
    return (email or "").strip().lower()


def audit(action, *, project=None, user=None, actor=None, ip=None, **detail):
    """Record who did what; `detail` never carries secrets (callers pass masked values)."""
    AuditLog.create(project=project, user=user, actor=actor or (user.email if user else "system"),
                    action=action, ip=ip, detail=json.dumps(detail, sort_keys=True, default=str))


def get_project(public_id):
    """The project with this public id; raises NotFound."""
    project = Project.get_or_none(Project.public_id == public_id)
    if project is None:
        raise NotFound(public_id)
    return project


def create_project(name, admin_email, box, *, admin_password=None, stripe_secret_key=None,
                   stripe_webhook_secret=None, actor="cli"):
    """Create a project with its first API key and its admin (new, or an existing account)."""
    email = normalize_email(admin_email)
    generated = None
    with database.atomic():
        user = User.get_or_none(User.email == email)
        if user is None:
            if admin_password is None:
                admin_password = generated = security.generate_password()
            user = User.create(email=email, password_hash=security.hash_password(admin_password))
        project = Project.create(
            public_id=security.public_id("proj"), name=name.strip(),
            stripe_secret_key=box.encrypt(stripe_secret_key),
            stripe_webhook_secret=box.encrypt(stripe_webhook_secret))
        Membership.create(user=user, project=project)
        key = apikeys.issue(project, label="default")
        audit("project.created", project=project, actor=actor, name=project.name, admin=email)
        audit("api_key.created", project=project, actor=actor, key_id=key.key_id, prefix=key.prefix)
    return NewProject(project=project, api_key=key, admin=user, admin_password=generated)


def set_stripe(project, box, *, secret_key=None, webhook_secret=None, actor="cli", user=None, ip=None):
    """Store new Stripe credentials (encrypted); None leaves a value as it is."""
    changed = {}
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


def stripe_secret_key(project, box, default=None):
    """The project's Stripe secret key, else the deployment-wide one."""
    return box.decrypt(project.stripe_secret_key) or default


def webhook_secret(project, box):
    """The project's webhook signing secret, or None."""
    return box.decrypt(project.stripe_webhook_secret)


def projects_of(user):
    """Projects `user` may administer, by name."""
    return list(Project.select().join(Membership).where(Membership.user == user).order_by(Project.name))


def is_member(user, project):
    """True when `user` belongs to `project`."""
    return Membership.select().where(Membership.user == user, Membership.project == project).exists()


def set_past_due_policy(project, allowed, *, user=None, ip=None):
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


def set_paused_collection_policy(project, allowed, *, actor=None, user=None, ip=None):
    """Whether subscriptions with paused payment collection keep access (SPEC 3.3); audited when it changes."""
    if bool(allowed) == bool(project.paused_collection_has_access):
        return False
    project.paused_collection_has_access = bool(allowed)
    project.updated_at = utcnow()
    with database.atomic():
        project.save()
        audit("settings.paused_collection_policy", project=project, actor=actor, user=user, ip=ip,
              paused_collection_has_access=bool(allowed))
        _announce_policy(project)
    apikeys.invalidate(project.id)  # cached key lookups carry the project row
    return True


def _announce_policy(project):
    """A policy change can move has_access of many customers: each one whose answer moved hears of it."""
    from pulse import outbox
    from pulse.models import Subscription
    outbox.customers_changed(project, outbox.customers_of_subscriptions(
        (Subscription.project == project) & ((Subscription.status == "past_due") | Subscription.pause_behavior.is_null(False))))
