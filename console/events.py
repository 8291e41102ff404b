"""Webhook events: filtered list, payload view, and re-apply for failed events."""

import json
import logging

import tornado.web

from console.base import MAX_ID, PID, ProjectHandler
from pulse import insights, webhooks
from pulse.db import block
from pulse.outcomes import Outcome

log = logging.getLogger("pulse.console")


class EventsHandler(ProjectHandler):
    section = "events"

    def get(self, project_id):
        type_ = self.get_query_argument("type", "").strip()[:100]
        outcome = self.get_query_argument("outcome", "")
        if outcome not in insights.OUTCOMES:
            outcome = ""
        with block():
            page = insights.list_events(
                self.project,
                type_=type_,
                outcome=outcome,
                before=self.cursor_arg("before"),
                after=self.cursor_arg("after"),
            )
            types = insights.event_types(self.project)
        self.render_page(
            "events.html",
            events=page.rows,
            page=page,
            type=type_,
            outcome=outcome,
            types=types,
            outcomes=insights.OUTCOMES,
        )


class EventPage(ProjectHandler):
    section = "events"

    def event(self, event_id):
        if len(event_id) > 19 or int(event_id) > MAX_ID:  # the route takes only [0-9]+
            raise tornado.web.HTTPError(404, reason="No such webhook event in this project.")
        with block():
            event = insights.get_event(self.project, event_id)
        if event is None:
            raise tornado.web.HTTPError(404, reason="No such webhook event in this project.")
        return event

    def show(self, event, status=200, error=""):
        try:
            payload = json.dumps(json.loads(event.payload), indent=2, sort_keys=True) if event.payload else ""
        except ValueError:
            payload = event.payload
        with block():
            customer = insights.customer_of_event(self.project, event)
        self.render_page("event.html", status=status, event=event, payload=payload, error=error, customer=customer)


class EventHandler(EventPage):
    def get(self, project_id, event_id):
        self.show(self.event(event_id))


class ReapplyHandler(EventPage):
    async def post(self, project_id, event_id):
        event = self.event(event_id)
        if event.outcome != Outcome.FAILED:
            self.show(event, status=409, error="Only failed events can be re-applied.")
            return
        try:
            outcome = await webhooks.reapply(event.id, config=self.config, box=self.box)
        except LookupError:
            self.show(event, status=409, error="This event has no stored payload to apply.")
            return
        except webhooks.WebhookError:
            outcome = Outcome.FAILED
        with block():
            self.audit("webhook.reapplied", project=self.project, event_id=event.stripe_event_id, outcome=outcome)
        if outcome == Outcome.FAILED:
            self.show(self.event(event_id), status=502, error="Applying the event failed again; see the error below.")
            return
        self.redirect(self.project_url(f"events/{event.id}?notice=reapplied"), status=303)


default_handlers = [
    (PID + r"/events", EventsHandler),
    (PID + r"/events/([0-9]+)", EventHandler),
    (PID + r"/events/([0-9]+)/reapply", ReapplyHandler),
]
