"""Project settings (Stripe secrets write-only, webhook URL, connection check, past-due policy) and the audit log."""

import json

from console.base import PID, ProjectHandler
from pulse import billing, insights, projects, security
from pulse.db import block


def is_local_host(host):
    """True for a Host header Stripe could never deliver to (loopback names and addresses)."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]").lower()
    return name in ("localhost", "::1", "0.0.0.0") or name.startswith("127.") or name.endswith(".localhost")


class SettingsPage(ProjectHandler):
    section = "settings"

    def show(self, status=200, error="", check=None):
        with block():
            secret = projects.stripe_secret_key(self.project, self.box)
            webhook = projects.webhook_secret(self.project, self.box)
        self.render_page(
            "settings.html",
            status=status,
            error=error,
            check=check,
            stripe_key_masked=security.mask_secret(secret),
            webhook_secret_masked=security.mask_secret(webhook),
            uses_default_key=not secret and bool(self.config.stripe_secret_key),
            has_stored_secret=bool(self.project.stripe_secret_key or self.project.stripe_webhook_secret),
            webhook_url=self.webhook_url(),
            local_host=is_local_host(self.request.host),
        )


class SettingsHandler(SettingsPage):
    def get(self, project_id):
        self.show()


class StripeSettingsHandler(SettingsPage):
    def post(self, project_id):
        secret = self.get_body_argument("stripe_secret_key", "").strip()
        webhook = self.get_body_argument("stripe_webhook_secret", "").strip()
        if not secret and not webhook:
            self.show(status=400, error="Enter a new secret key or webhook secret (empty fields are left unchanged).")
            return
        try:
            projects.validate_stripe_secrets(secret or None, webhook or None)
        except projects.Refused as exc:
            self.show(status=400, error=str(exc))
            return
        replacing = [
            name
            for name, new, stored in (
                ("secret key", secret, self.project.stripe_secret_key),
                ("webhook signing secret", webhook, self.project.stripe_webhook_secret),
            )
            if new and stored
        ]
        if replacing and self.get_body_argument("confirm", "").strip().lower() != "replace":
            # A typed word, not a dialog: the confirmation works without JavaScript.
            self.show(
                status=400,
                error=f"This replaces the current {' and '.join(replacing)} at once. "
                "To confirm, type replace in the confirmation box and save again.",
            )
            return
        try:
            with block():
                projects.set_stripe(
                    self.project,
                    self.box,
                    secret_key=secret or None,
                    webhook_secret=webhook or None,
                    actor=self.current_user.email,
                    user=self.current_user,
                    ip=self.client_ip,
                )
        except projects.SandboxRule as exc:
            self.show(status=400, error=str(exc)[0].upper() + str(exc)[1:] + ".")
            return
        self.redirect(self.project_url("settings?notice=stripe_saved"), status=303)


class PolicySettingsHandler(SettingsPage):
    def post(self, project_id):
        value = self.get_body_argument("past_due_has_access", "")
        if value not in ("yes", "no"):
            self.show(status=400, error="Choose whether past-due subscriptions keep access.")
            return
        with block():
            projects.set_past_due_policy(self.project, value == "yes", user=self.current_user, ip=self.client_ip)
        self.redirect(self.project_url("settings?notice=policy_saved"), status=303)


class PausedCollectionSettingsHandler(SettingsPage):
    def post(self, project_id):
        value = self.get_body_argument("paused_collection_has_access", "")
        if value not in ("yes", "no"):
            self.show(status=400, error="Choose whether subscriptions with paused payment collection keep access.")
            return
        with block():
            projects.set_paused_collection_policy(
                self.project, value == "yes", user=self.current_user, ip=self.client_ip
            )
        self.redirect(self.project_url("settings?notice=paused_policy_saved"), status=303)


class CheckConnectionHandler(SettingsPage):
    async def post(self, project_id):
        try:
            client = billing.project_client(self.project, self.box, self.config)
            account = await billing.check_connection(client)
        except billing.StripeNotConfigured:
            check = {"ok": False, "message": "No Stripe secret key is set for this project or the deployment."}
        except billing.StripeFailure as exc:
            check = {"ok": False, "message": f"Stripe refused the request: {exc.message}"}
        else:
            name = f" ({account['name']})" if account.get("name") else ""
            check = {"ok": True, "message": f"Connected to Stripe account {account['id']}{name}."}
        with block():
            self.audit("settings.connection_checked", project=self.project, ok=check["ok"])
        self.show(check=check)


class AuditHandler(ProjectHandler):
    section = "audit"

    def get(self, project_id):
        with block():
            page = insights.audit_entries(
                self.project, before=self.cursor_arg("before"), after=self.cursor_arg("after")
            )
        rows = page.rows
        for row in rows:
            try:
                detail = json.loads(row.detail or "{}")
            except ValueError:
                detail = {}
            row.pairs = (
                [
                    (k, {True: "yes", False: "no"}.get(v, v) if isinstance(v, bool) else v)
                    for k, v in sorted(detail.items())
                ]
                if isinstance(detail, dict)
                else []
            )
        self.render_page("audit.html", entries=rows, page=page)


default_handlers = [
    (PID + r"/settings", SettingsHandler),
    (PID + r"/settings/stripe", StripeSettingsHandler),
    (PID + r"/settings/policy", PolicySettingsHandler),
    (PID + r"/settings/paused-collection", PausedCollectionSettingsHandler),
    (PID + r"/settings/check", CheckConnectionHandler),
    (PID + r"/audit", AuditHandler),
]
