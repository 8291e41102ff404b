"""The outgoing webhooks page: endpoints (secret shown once), their deliveries, resend and "send test event"."""

from console.base import ProjectHandler
from console.dashboard import PID
from pulse import endpoints, outbox
from pulse.db import block, transaction
from pulse.models import WebhookDelivery
from web import ascii_int

DONE = {
    "deleted": "Endpoint deleted.",
    "test": "Test event queued.",
    "resent": "Delivery queued again.",
    "enabled": "Endpoint enabled; its pending deliveries resume.",
    "events": "Event types saved; they apply from the next change on.",
}


class WebhooksPage(ProjectHandler):
    section = "webhooks"

    def show(self, status=200, error="", confirm=None, created=None, form=None):
        with block():
            rows = endpoints.endpoints_of(self.project)
            deliveries = outbox.deliveries_of(self.project, limit=100)
        self.render_page(
            "webhooks.html",
            status=status,
            endpoints=rows,
            deliveries=deliveries,
            error=error,
            confirm=confirm,
            created=created,
            form=form or {"url": "", "description": "", "events": list(endpoints.SUBSCRIBABLE)},
            event_types=endpoints.SUBSCRIBABLE,
            events_of=endpoints.events_of,
            done=DONE.get(self.get_query_argument("done", ""), ""),
        )

    def endpoint(self):
        with block():
            found = endpoints.get_endpoint(self.project, self.get_body_argument("endpoint", ""))
        if found is None:
            self.show(404, "No such endpoint in this project.")
        return found


class WebhooksHandler(WebhooksPage):
    def get(self, project_id):
        self.show()

    def post(self, project_id):
        form = {
            "url": self.get_body_argument("url", "").strip(),
            "description": self.get_body_argument("description", "").strip(),
            "events": self.get_body_arguments("enabled_events"),
        }
        # The page's form marks itself: there, no box ticked is a mistake, not "every event".
        chosen = form["events"] if form["events"] or self.get_body_argument("choose_events", "") else None
        try:
            chosen = chosen_events(chosen)
            with block(), transaction():
                endpoint, secret = endpoints.create_endpoint(
                    self.project,
                    form["url"],
                    self.settings["secret_box"],
                    self.settings["config"],
                    form["description"],
                    chosen,
                )
                self.audit(
                    "webhook_endpoint.created", project=self.project, endpoint=endpoint.public_id, url=endpoint.url
                )
        except endpoints.EndpointError as exc:
            return self.show(400, exc.message, form=form)
        # The secret is shown in this answer only (not stored in clear, never shown again).
        self.show(201, created={"endpoint": endpoint, "secret": secret})


class EndpointEventsHandler(WebhooksPage):
    def post(self, project_id):
        endpoint = self.endpoint()
        if endpoint is None:
            return
        try:
            with block(), transaction():
                endpoints.update_endpoint(
                    endpoint, enabled_events=chosen_events(self.get_body_arguments("enabled_events"))
                )
                self.audit("webhook_endpoint.updated", project=self.project, endpoint=endpoint.public_id)
        except endpoints.EndpointError as exc:
            return self.show(400, exc.message)
        self.redirect(self.project_url("webhooks?done=events"), status=303)


def chosen_events(ticked):
    """The form's ticked event types as enabled_events: all of them is "*" (later types too); none is refused."""
    if ticked is None:
        return None
    if not ticked:
        raise endpoints.EndpointError("enabled_events", "Choose at least one event type to send.")
    return ["*"] if set(ticked) == set(endpoints.SUBSCRIBABLE) else ticked


class EndpointDeleteHandler(WebhooksPage):
    def post(self, project_id):
        endpoint = self.endpoint()
        if endpoint is None:
            return
        if self.get_body_argument("confirm", "") != "yes":
            return self.show(confirm=endpoint)  # asks again, without JavaScript
        with block():
            endpoints.delete_endpoint(self.project, endpoint.public_id)
            self.audit("webhook_endpoint.deleted", project=self.project, endpoint=endpoint.public_id)
        self.redirect(self.project_url("webhooks?done=deleted"), status=303)


class EndpointTestHandler(WebhooksPage):
    def post(self, project_id):
        endpoint = self.endpoint()
        if endpoint is not None:
            with block(), transaction():
                outbox.send_test(self.project, endpoint)
            self.redirect(self.project_url("webhooks?done=test"), status=303)


class EndpointEnableHandler(WebhooksPage):
    def post(self, project_id):
        endpoint = self.endpoint()
        if endpoint is not None:
            with block(), transaction():
                endpoints.enable_endpoint(endpoint)
            self.redirect(self.project_url("webhooks?done=enabled"), status=303)


class DeliveryResendHandler(WebhooksPage):
    def post(self, project_id):
        number = ascii_int(self.get_body_argument("delivery", ""))
        with block(), transaction():
            delivery = (
                None
                if number is None
                else WebhookDelivery.get_or_none(WebhookDelivery.id == number, WebhookDelivery.project == self.project)
            )
            if delivery is not None:
                outbox.resend(delivery)
        if delivery is None:
            return self.show(404, "No such delivery in this project.")
        self.redirect(self.project_url("webhooks?done=resent"), status=303)


default_handlers = [
    (PID + r"/webhooks", WebhooksHandler),
    (PID + r"/webhooks/delete", EndpointDeleteHandler),
    (PID + r"/webhooks/events", EndpointEventsHandler),
    (PID + r"/webhooks/test", EndpointTestHandler),
    (PID + r"/webhooks/enable", EndpointEnableHandler),
    (PID + r"/webhooks/resend", DeliveryResendHandler),
]
