"""POST /api/webhook/{project_id} and POST /api/webhook: Stripe event deliveries (SPEC 4)."""

from handlers.base import ApiError, ApiHandler
from pulse import projects, webhooks
from web import client_ip


class _WebhookHandler(ApiHandler):
    """Signed by Stripe, not by an API key."""

    auth_required = False

    async def _deliver(self, project, secret):
        try:
            body = await webhooks.receive(
                project,
                self.raw_body,
                self.request.headers.get("Stripe-Signature"),
                secret,
                config=self.config,
                box=self.settings["secret_box"],
                limiter=self.settings["rate_limiter"],
                remote_ip=client_ip(self.request, self.config),
            )
        except webhooks.WebhookError as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        self.write_json(body)


class ProjectWebhookHandler(_WebhookHandler):
    async def post(self, project_id):
        project = projects.for_delivery(project_id)
        if project is None:
            raise ApiError(404, "not_found", "No such project.")
        self.project = project
        secret = projects.webhook_secret(project, self.settings["secret_box"])
        if not secret:
            raise ApiError(
                503,
                "webhook_not_configured",
                "This project has no Stripe webhook signing secret; set it in the console "
                "or with `run.py set-stripe --webhook-secret`.",
            )
        await self._deliver(project, secret)


class DeploymentWebhookHandler(_WebhookHandler):
    async def post(self):
        secret = self.config.stripe_webhook_secret
        if not secret:
            raise ApiError(
                503, "webhook_not_configured", "The deployment-wide webhook endpoint needs PULSE_STRIPE_WEBHOOK_SECRET."
            )
        await self._deliver(None, secret)


default_handlers = [
    (r"/api/webhook/([A-Za-z0-9_-]{1,40})/?", ProjectWebhookHandler),
    (r"/api/webhook/?", DeploymentWebhookHandler),
]
