"""Customers: prefix search, status filter, keyset pages of 50, and the customer page."""

import tornado.web

from console.base import ProjectHandler
from console.dashboard import PID
from pulse import insights
from pulse.db import block
from pulse.status import ALL_STATUSES, has_access


class CustomersHandler(ProjectHandler):
    section = "customers"

    def get(self, project_id):
        q = self.get_query_argument("q", "").strip()[:254]
        status = self.get_query_argument("status", "")
        if status not in ALL_STATUSES:
            status = ""
        try:
            after = max(int(self.get_query_argument("after", "0") or 0), 0)
        except ValueError:
            after = 0
        with block():
            rows, cursor = insights.search_customers(self.project, q=q, status=status, after=after)
        self.render_page("customers.html", customers=rows, cursor=cursor, q=q, status_filter=status,
                         statuses=ALL_STATUSES, first_page=not after)


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
        for sub in subscriptions:
            sub.access = has_access(sub.status, self.project.past_due_has_access)
        self.render_page("customer.html", customer=customer, subscriptions=subscriptions, events=events)


default_handlers = [
    (PID + r"/customers", CustomersHandler),
    (PID + r"/customers/([^/]+)", CustomerHandler),
    (PID + r"/customers/", CustomerHandler),
]
