"""Invoices in the simulator: built from a subscription's items, finalized, charged (with Stripe's retry
schedule when the card fails), listed, and previewed (POST /v1/invoices/create_preview), with the
prorations a plan change makes, computed as Stripe computes them (to the second, per item).
"""

import secrets
from datetime import UTC, datetime

from sandbox import objects
from sandbox.objects import invalid

PRORATIONS = ("create_prorations", "none", "always_invoice")
RETRY_DAYS = (3, 5, 7)  # Stripe's default retry schedule for failed renewals: days after each failure
BILLED = ("active", "past_due")  # statuses whose changes are prorated (a trial bills nothing yet)


def item_amount(price, quantity):
    """What one period of an item costs (a metered item is billed on usage: 0 here)."""
    if price["recurring"]["usage_type"] == "metered":
        return 0
    return (price.get("unit_amount") or 0) * (quantity or 1)


def price_name(price):
    return price.get("nickname") or price.get("lookup_key") or price["id"]


def _date(ts):
    return datetime.fromtimestamp(ts, UTC).strftime("%-d %b %Y")


def line(sub, item_id, price, amount, quantity, period, description, proration=False):
    """An invoice line of a subscription item, in the shape of API 2025-03-31 and later."""
    return {
        "id": objects.new_id("il"),
        "object": "line_item",
        "amount": amount,
        "currency": price["currency"],
        "description": description,
        "discount_amounts": [],
        "discountable": True,
        "discounts": [],
        "invoice": None,
        "livemode": False,
        "metadata": {},
        "parent": {
            "type": "subscription_item_details",
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": objects.new_id("ii") if proration else None,
                "proration": proration,
                "proration_details": {"credited_items": None},
                "subscription": sub["id"],
                "subscription_item": item_id,
            },
        },
        "period": {"start": period[0], "end": period[1]},
        "pretax_credit_amounts": [],
        "pricing": {
            "price_details": {"price": price["id"], "product": price["product"]},
            "type": "price_details",
            "unit_amount_decimal": price["unit_amount_decimal"],
        },
        "quantity": quantity,
        "subtotal": amount,
        "taxes": [],
    }


def period_lines(sub, items, period, trial=False):
    """One line per item for a billing period: (item id, price, quantity) each; a trial's are free."""
    lines = []
    for item_id, price, quantity in items:
        amount = 0 if trial else item_amount(price, quantity)
        recurring = price["recurring"]
        described = (
            f"Trial period for {price_name(price)}"
            if trial
            else f"{quantity or 1} × {price_name(price)} (at {price['unit_amount'] / 100:.2f} "
            f"{price['currency'].upper()} / {recurring['interval']})"
        )
        lines.append(line(sub, item_id, price, amount, quantity, period, described))
    return lines


def invoice(sub, *, billing_reason, lines, period_start, period_end, invoice_id=None):
    """A draft invoice of the subscription with these lines."""
    created = objects.now()
    invoice_id = invoice_id or "in_" + secrets.token_hex(12)
    total = sum(entry["amount"] for entry in lines)
    for entry in lines:
        entry["invoice"] = invoice_id
    return {
        "id": invoice_id,
        "object": "invoice",
        "account_country": "US",
        "account_name": None,
        "amount_due": max(total, 0),
        "amount_paid": 0,
        "amount_remaining": max(total, 0),
        "amount_shipping": 0,
        "attempt_count": 0,
        "attempted": False,
        "auto_advance": True,
        "billing_reason": billing_reason,
        "collection_method": "charge_automatically",
        "created": created,
        "currency": sub["currency"],
        "customer": sub["customer"],
        "default_payment_method": None,
        "description": None,
        "discounts": [],
        "due_date": None,
        "effective_at": None,
        "hosted_invoice_url": None,
        "invoice_pdf": None,
        "issuer": {"type": "self"},
        "lines": {"object": "list", "data": lines, "has_more": False, "url": f"/v1/invoices/{invoice_id}/lines"},
        "livemode": False,
        "metadata": {},
        "next_payment_attempt": None,
        "number": None,
        "parent": {
            "subscription_details": {"metadata": dict(sub["metadata"]), "subscription": sub["id"]},
            "type": "subscription_details",
            "quote_details": None,
        },
        "period_start": period_start,
        "period_end": period_end,
        "starting_balance": 0,
        "status": "draft",
        "status_transitions": {
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        "subscription": sub["id"],
        "subtotal": total,
        "total": total,
    }


class Invoices:
    """Invoices, charges and previews of a simulated account (a part of sandbox.core.Simulator)."""

    def card_of(self, customer_id):
        """The customer's test card: "ok" (pays), "fails" (every charge declined) or "none"."""
        return (self.customers.get(customer_id) or {}).get("_card", "none")

    def open_invoice(self, sub_id, reason, lines, start, end):
        """Create and finalize an invoice of the subscription (invoice.created, invoice.finalized)."""
        sub = self.subscriptions[sub_id]
        with self.clock():
            inv = invoice(sub, billing_reason=reason, lines=lines, period_start=start, period_end=end)
        self._store(self.invoices, inv)
        sub["latest_invoice"] = inv["id"]
        self.emit("invoice.created", objects.public(inv))
        self.finalize(inv)
        self.emit("invoice.finalized", objects.public(inv))
        return inv

    def finalize(self, inv):
        """Open the invoice: its number (the customer's prefix and sequence) and hosted page, as Stripe does."""
        customer = self.customers.get(inv["customer"])
        if customer is not None:
            sequence, prefix = customer["next_invoice_sequence"], customer["invoice_prefix"]
            customer["next_invoice_sequence"] += 1
        else:  # a customer the tests never created
            sequence = 1 + sum(1 for other in self.invoices.values() if other["customer"] == inv["customer"])
            prefix = inv["customer"][-8:].upper()
        token = secrets.token_hex(12)
        inv.update(
            status="open",
            number=f"{prefix}-{sequence:04d}",
            hosted_invoice_url=f"{self.page_base}/invoice/{inv['id']}"
            if self.page_base
            else f"https://invoice.stripe.com/i/{self.account['id']}/test_{token}",
            invoice_pdf=None
            if self.page_base
            else f"https://pay.stripe.com/invoice/{self.account['id']}/test_{token}/pdf",
        )
        inv["status_transitions"]["finalized_at"] = self.now()

    def charge(self, inv):
        """Attempt the invoice with the customer's card; True when paid (nothing due is paid without one)."""
        inv["attempt_count"] += 1
        inv["attempted"] = True
        if inv["amount_due"] == 0 or self.card_of(inv["customer"]) == "ok":
            inv.update(status="paid", amount_paid=inv["amount_due"], amount_remaining=0, next_payment_attempt=None)
            inv["status_transitions"]["paid_at"] = self.now()
            self.emit("invoice.paid", objects.public(inv))
            self.emit("invoice.payment_succeeded", objects.public(inv))
            return True
        self.emit("invoice.payment_failed", objects.public(inv))
        return False

    def settle(self, sub_id, inv, failures=0):
        """Charge `inv`; on failure move along the retry schedule, then to the account's after-retries status.
        Returns the subscription event that follows: "updated" or "deleted"."""
        sub = self.subscriptions[sub_id]
        if self.charge(inv):
            if sub["status"] == "past_due" and sub.get("_open_invoice") not in (None, inv["id"]):
                return "updated"  # an older invoice is still unpaid
            sub.update(status="active", _retry_at=None, _failures=0, _open_invoice=None)
            return "updated"
        sub["_failures"] = failures + 1
        sub["_open_invoice"] = inv["id"]
        if sub["_failures"] <= len(RETRY_DAYS):
            sub.update(status="past_due", _retry_at=self.now() + RETRY_DAYS[sub["_failures"] - 1] * 86400)
            inv["next_payment_attempt"] = sub["_retry_at"]
            return "updated"
        sub["_retry_at"] = None
        inv["next_payment_attempt"] = None
        if self.after_retries == "canceled":
            sub.update(status="canceled", canceled_at=self.now(), ended_at=self.now())
            sub["cancellation_details"] = {"comment": None, "feedback": None, "reason": "payment_failed"}
            return "deleted"
        sub["status"] = self.after_retries
        return "updated"

    def renewal_lines(self, sub, period):
        """A renewal's lines: each item for the new period, then the prorations pending since the last one."""
        items = [(item["id"], item["price"], item["quantity"]) for item in sub["items"]["data"]]
        return period_lines(sub, items, period) + sub.pop("_pending", [])

    def prorations(self, sub, planned, when):
        """Stripe's proration lines for a change of items at `when`: the unused time of each replaced item as a
        credit, the remaining time of its replacement as a charge. `planned`: (item or None, price, quantity,
        deleted) per item after the change."""
        first = sub["items"]["data"][0]
        start, end = first["current_period_start"], first["current_period_end"]
        if sub["status"] not in BILLED or end <= when:
            return []
        fraction, lines = (end - when) / max(end - start, 1), []
        for item, price, quantity, deleted in planned:
            if item is not None and not deleted and (item["price"]["id"], item["quantity"]) == (price["id"], quantity):
                continue
            item_id = item["id"] if item is not None else objects.new_id("si")
            if item is not None:
                old = item["price"]
                amount = -round(item_amount(old, item["quantity"]) * fraction)
                text = f"Unused time on {item['quantity'] or 1} × {price_name(old)} after {_date(when)}"
                lines.append(line(sub, item_id, old, amount, item["quantity"], (when, end), text, True))
            if not deleted:
                amount = round(item_amount(price, quantity) * fraction)
                text = f"Remaining time on {quantity or 1} × {price_name(price)} after {_date(when)}"
                lines.append(line(sub, item_id, price, amount, quantity, (when, end), text, True))
        return lines

    def preview_invoice(self, params):
        """POST /v1/invoices/create_preview for a change of an existing subscription; nothing changes."""
        sub_id = params.get("subscription")
        if not sub_id:
            raise invalid("Missing required param: subscription.", "subscription")
        if sub_id not in self.subscriptions:
            raise invalid(f"No such subscription: '{sub_id}'", "subscription", "resource_missing")
        sub = self.subscriptions[sub_id]
        if params.get("customer") and params["customer"] != sub["customer"]:
            raise invalid(f"The subscription {sub_id} does not belong to customer {params['customer']}.", "customer")
        details = params.get("subscription_details") or {}
        behavior = details.get("proration_behavior", "create_prorations")
        if behavior not in PRORATIONS:
            raise invalid(
                f"Invalid proration_behavior: must be one of {', '.join(PRORATIONS)}",
                "subscription_details[proration_behavior]",
            )
        planned = self.planned_items(sub, details.get("items") or [], "subscription_details[items]")
        when = self.now()
        changes = self.prorations(sub, planned, when) if behavior != "none" else []
        pending = [dict(entry) for entry in sub.get("_pending", [])]
        first = sub["items"]["data"][0]
        start, end = first["current_period_start"], first["current_period_end"]
        preview_id = "upcoming_in_" + secrets.token_hex(12)
        if behavior == "always_invoice":
            inv = invoice(
                sub, billing_reason="subscription_update", lines=pending + changes, period_start=when, period_end=when
            )
            inv.update(id=preview_id, next_payment_attempt=when)
            return objects.public(inv)
        items = [
            (item["id"] if item else objects.new_id("si"), price, q) for item, price, q, gone in planned if not gone
        ]
        next_end = end + (self._period_seconds(items[0][1]) if items else 0)
        lines = pending + changes + period_lines(sub, items, (end, next_end))
        inv = invoice(sub, billing_reason="subscription_cycle", lines=lines, period_start=start, period_end=end)
        inv.update(id=preview_id, next_payment_attempt=end)
        return objects.public(inv)

    @staticmethod
    def _period_seconds(price):
        recurring = price["recurring"]
        return objects.INTERVAL_DAYS.get(recurring["interval"], 30) * recurring["interval_count"] * 86400

    def _invoices(self, method, parts, params):
        if parts == ["invoices", "create_preview"] and method == "POST":
            return self.preview_invoice(params)
        if len(parts) == 1 and method == "GET":
            found = [
                i
                for i in self.invoices.values()
                if all(not params.get(k) or i[k] == params[k] for k in ("customer", "subscription", "status"))
            ]
            listing = objects.page(found, params, "/v1/invoices")
            return dict(listing, data=[objects.public(i) for i in listing["data"]])
        if len(parts) == 2 and method == "GET":
            return objects.public(self._get(self.invoices, "invoice", parts[1]))
        raise objects.unrecognized(method, parts)
