"""Customers: prefix search, status filter, keyset pages of 50 newest first, and the customer page."""

import tornado.web

from console.base import PID, ProjectHandler
from pulse import insights
from pulse import subscriptions as subs
from pulse.db import block
from pulse.status import ALL_STATUSES, policy_of, row_has_access


class CustomersHandler(ProjectHandler):
    section = "customers"

    def get(self, project_id):
        q = self.get_query_argument("q", "").strip()[:254]
        status = self.get_query_argument("status", "")
        if status not in ALL_STATUSES:
            status = ""
        with block():
            page, total = insights.search_customers(
                self.project, q=q, status=status, before=self.cursor_arg("before"), after=self.cursor_arg("after")
            )
        self.render_page(
            "customers.html",
            customers=page.rows,
            page=page,
            total=total,
            q=q,
            status_filter=status,
            statuses=ALL_STATUSES,
        )


class CustomerHandler(ProjectHandler):
    section = "customers"

    def get(self, project_id, external_user_id=None):
        if external_user_id is None:  # …/customers/?id=…: ids a browser would not keep in a path
            external_user_id = self.get_query_argument("id", None, strip=False)
            if not external_user_id:
                raise tornado.web.HTTPError(404, reason="No customer with that external id in this project.")
        with block():
            customer = insights.customer_by_external_id(self.project, external_user_id)
            if customer is None:
                raise tornado.web.HTTPError(404, reason="No customer with that external id in this project.")
            subscriptions = insights.subscriptions_of(customer)
            events = insights.events_of_customer(self.project, customer, subscriptions)
            previous = subs.previous_stripe_customers(customer)
        policy = policy_of(self.project)
        for sub in subscriptions:
            sub.access = row_has_access(sub, policy)
        self.render_page(
            "customer.html",
            customer=customer,
            subscriptions=subscriptions,
            events=events,
            previous=previous,
            with_access=sum(sub.access for sub in subscriptions),
        )


default_handlers = [
    (PID + r"/customers", CustomersHandler),
    (PID + r"/customers/([^/]+)", CustomerHandler),
    (PID + r"/customers/", CustomerHandler),
]
