"""The fake Stripe's subscription lifecycle, invoices, invoice previews and Entitlements (issue 16).

A mixin of tests.fake_stripe.FakeStripe: `dispatch` hands it what it does not serve itself.

    fake.add_invoice(sub_id, amount_due=2000, status="paid")     # an invoice of the subscription's customer
    fake.attach_feature(price_id, "api_access")                  # a Feature on the price's Product
    fake.active_features(cus_id)                                 # lookup keys Stripe reports as active
"""

import secrets

from tests import fake_stripe_objects as objects

PRORATIONS = ("create_prorations", "none", "always_invoice")
_ENTITLED = ("active", "trialing", "past_due")


class LifecycleMixin:
    def _lifecycle_state(self):
        if not hasattr(self, "invoices"):
            self.invoices = {}
        if not hasattr(self, "product_features"):
            self.product_features = {}
        return self

    # ------------------------------------------------------------ test-side helpers

    def add_invoice(self, sub_id, amount_due=2000, status="paid", created=None):
        self._lifecycle_state()
        sub = self.subscriptions[sub_id]
        item = sub["items"]["data"][0]
        number = f"{sub['customer'][-6:].upper()}-{len(self.invoices) + 1:04d}"
        invoice_id = objects.new_id("in")
        invoice = {
            "id": invoice_id,
            "object": "invoice",
            "number": number,
            "customer": sub["customer"],
            "status": status,
            "amount_due": amount_due,
            "amount_paid": amount_due if status == "paid" else 0,
            "amount_remaining": 0 if status == "paid" else amount_due,
            "total": amount_due,
            "subtotal": amount_due,
            "currency": "usd",
            "created": created or objects.now(),
            "period_start": item["current_period_start"],
            "period_end": item["current_period_end"],
            "livemode": False,
            "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_fake/test_{secrets.token_hex(8)}",
            "invoice_pdf": f"https://pay.stripe.com/invoice/acct_fake/test_{secrets.token_hex(8)}/pdf",
            "parent": {"type": "subscription_details", "subscription_details": {"subscription": sub_id}},
        }
        self.invoices[invoice_id] = dict(invoice, _seq=next(self._seq))
        return invoice

    def attach_feature(self, price_or_product, lookup_key):
        """Attach a Feature (by lookup_key) to a Product (prod_…, or a price id's product), as the Dashboard does."""
        self._lifecycle_state()
        product = price_or_product if price_or_product.startswith("prod_") else self.prices[price_or_product]["product"]
        self.product_features.setdefault(product, [])
        if lookup_key not in self.product_features[product]:
            self.product_features[product].append(lookup_key)

    def active_features(self, cus_id):
        """Stripe's active entitlements of a customer: the features of the products it subscribes to."""
        self._lifecycle_state()
        keys = []
        for sub in self.subscriptions.values():
            if sub["customer"] != cus_id or sub["status"] not in _ENTITLED:
                continue
            for item in sub["items"]["data"]:
                for key in self.product_features.get(item["price"]["product"], []):
                    if key not in keys:
                        keys.append(key)
        return keys

    # ------------------------------------------------------------ the API

    def dispatch_lifecycle(self, method, parts, params):
        """(body) for the paths of this mixin, or None when the path is not one of them."""
        self._lifecycle_state()
        if parts[0] == "subscriptions" and len(parts) == 2 and method in ("POST", "DELETE"):
            sub = self._get(self.subscriptions, "subscription", parts[1])
            return self._cancel(sub) if method == "DELETE" else self._update(sub, params)
        if parts == ["invoices"] and method == "GET":
            wanted = params.get("customer")
            found = [i for i in self.invoices.values() if not wanted or i["customer"] == wanted]
            listing = objects.page(found, params, "/v1/invoices")
            return dict(listing, data=[objects.public(i) for i in listing["data"]])
        if parts == ["invoices", "create_preview"] and method == "POST":
            return self._preview(params)
        if parts == ["entitlements", "active_entitlements"] and method == "GET":
            if not params.get("customer"):
                raise self._error("Missing required param: customer.", "customer")
            if params["customer"] not in self.customers:
                self._missing("customer", params["customer"], "customer")
            data = [
                {
                    "id": f"ent_{key}",
                    "object": "entitlements.active_entitlement",
                    "feature": f"feat_{key}",
                    "livemode": False,
                    "lookup_key": key,
                }
                for key in self.active_features(params["customer"])
            ]
            return objects.page(data, params, "/v1/entitlements/active_entitlements")
        return None

    def _error(self, message, param, code=None):
        from tests.fake_stripe import StripeError

        return StripeError(400, objects.error_body(message, code=code, param=param))

    def _price_param(self, value, param):
        if value not in self.prices:
            raise self._error(f"No such price: '{value}'", param, "resource_missing")
        return self.prices[value]

    def _cancel(self, sub):
        if sub["status"] == "canceled":
            raise self._error("This subscription is already canceled.", None, "resource_missing")
        return self.set_subscription(sub["id"], status="canceled", cancel_at_period_end=False, cancel_at=None)

    def _update(self, sub, params):
        if sub["status"] in ("canceled", "incomplete_expired"):
            raise self._error("A canceled subscription can only update its cancellation_details and metadata.", None)
        behavior = params.get("proration_behavior")
        if behavior is not None and behavior not in PRORATIONS:
            raise self._error(
                f"Invalid proration_behavior: must be one of {', '.join(PRORATIONS)}", "proration_behavior"
            )
        item = sub["items"]["data"][0]
        if "cancel_at_period_end" in params:
            at_end = params["cancel_at_period_end"] == "true"
            sub["cancel_at_period_end"] = at_end
            sub["cancel_at"] = item["current_period_end"] if at_end else None
            sub["canceled_at"] = objects.now() if at_end else None
        if "cancel_at" in params:
            sub["cancel_at"] = int(params["cancel_at"]) if params["cancel_at"] else None
            if sub["cancel_at"] is None:
                sub["canceled_at"] = None
        for n, change in enumerate(params.get("items") or []):
            target = next((i for i in sub["items"]["data"] if i["id"] == change.get("id")), None)
            if target is None:
                raise self._error(
                    f"No such subscription item: '{change.get('id')}'", f"items[{n}][id]", "resource_missing"
                )
            if "price" in change:
                target["price"] = self._price_param(change["price"], f"items[{n}][price]")
            if "quantity" in change:
                target["quantity"] = int(change["quantity"])
        if "metadata" in params:
            sub["metadata"] = objects.merge_metadata(sub["metadata"], params["metadata"] or {})
        sub["_version"] += 1
        return self.subscription(sub["id"])

    def _preview(self, params):
        sub = self._get(self.subscriptions, "subscription", params.get("subscription") or "", "subscription")
        details = params.get("subscription_details") or {}
        behavior = details.get("proration_behavior", "create_prorations")
        if behavior not in PRORATIONS:
            raise self._error("Invalid proration_behavior", "subscription_details[proration_behavior]")
        item = sub["items"]["data"][0]
        old = item["price"]["unit_amount"] * (item["quantity"] or 1)
        change = (details.get("items") or [{}])[0]
        price = (
            self._price_param(change["price"], "subscription_details[items][0][price]")
            if change.get("price")
            else item["price"]
        )
        new = price["unit_amount"] * int(change.get("quantity") or item["quantity"] or 1)
        start, end = item["current_period_start"], item["current_period_end"]
        remaining = max(0.0, min(1.0, (end - objects.now()) / max(end - start, 1)))
        proration = round((new - old) * remaining) if behavior != "none" else 0
        lines = (
            [
                {
                    "id": objects.new_id("il"),
                    "object": "line_item",
                    "amount": proration,
                    "currency": "usd",
                    "description": "Remaining time on the new plan, less unused time on the old",
                    "period": {"start": objects.now(), "end": end},
                    "proration": True,
                }
            ]
            if proration
            else []
        )
        if behavior != "always_invoice":
            lines.append(
                {
                    "id": objects.new_id("il"),
                    "object": "line_item",
                    "amount": new,
                    "currency": "usd",
                    "description": "Next period",
                    "period": {"start": end, "end": end + (end - start)},
                    "proration": False,
                }
            )
        total = sum(line["amount"] for line in lines)
        return {
            "id": None,
            "object": "invoice",
            "customer": sub["customer"],
            "currency": "usd",
            "amount_due": max(total, 0),
            "subtotal": total,
            "total": total,
            "livemode": False,
            "lines": {"object": "list", "data": lines, "has_more": False, "url": "/v1/invoices/preview/lines"},
            "next_payment_attempt": objects.now() if behavior == "always_invoice" else end,
            "period_start": start,
            "period_end": end,
            "status": "draft",
            "parent": {"type": "subscription_details", "subscription_details": {"subscription": sub["id"]}},
        }
