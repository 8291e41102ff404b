"""Subscriptions in the simulator: Stripe's API for them (list, retrieve, update, cancel, resume) and the
changes Stripe itself makes, each with the events Stripe sends.

An update follows Stripe's rules: items by id (price swap, quantity, `deleted`; an item without id is
added), `cancel_at_period_end` and `cancel_at`, `pause_collection`, metadata, and `proration_behavior`:
create_prorations keeps the prorations for the next invoice, always_invoice invoices and charges them
now, none makes none.
"""

from sandbox import objects
from sandbox.invoices import PRORATIONS
from sandbox.objects import invalid

ENDED = ("canceled", "incomplete_expired")


def _quantity(value, param):
    if isinstance(value, int):
        return value
    if not (isinstance(value, str) and value.isdigit()):
        raise invalid(f"Invalid integer: {value}", param, "parameter_invalid_integer")
    return int(value)


class Subscriptions:
    """The subscriptions of a simulated account (a part of sandbox.core.Simulator)."""

    def add_item(self, sub_id, price_id, quantity=1, first=False, legacy=False):
        """Add an item on an existing price (metered: quantity None); `first` lists it before the others
        (Stripe does not order items); `legacy` gives it only the old `plan` object, no `price`."""
        sub = self.subscriptions[sub_id]
        template = sub["items"]["data"][0]
        price_obj = self.prices[price_id]
        item = {k: v for k, v in template.items() if k not in ("price", "plan")}
        item.update(id=objects.new_id("si"), quantity=quantity, created=objects.now())
        if legacy:
            item["plan"] = objects.legacy_plan(price_obj)
        else:
            item["price"] = price_obj
        sub["items"]["data"].insert(0 if first else len(sub["items"]["data"]), item)
        sub["_version"] += 1
        return self.subscription(sub_id)

    def set_subscription(self, sub_id, **changes):
        """Change a subscription like Stripe would (status, cancel_at_period_end, cancel_at, canceled_at,
        current_period_end, current_period_start, trial_end, ended_at, metadata, price, interval, quantity,
        pause_collection) on the first item; see add_item for more items. No events: the caller's job."""
        sub = self.subscriptions[sub_id]
        item = sub["items"]["data"][0]
        for key, value in changes.items():
            if key in ("current_period_end", "current_period_start"):
                item[key] = value
            elif key in ("price", "interval"):
                # A swap to a known price keeps it as it is (interval_count, lookup_key...), as Stripe would.
                price_id = changes.get("price", item["price"]["id"])
                if "interval" in changes or price_id not in self.prices:
                    interval = changes.get("interval", item["price"]["recurring"]["interval"])
                    self.prices[price_id] = objects.price(price_id, interval)
                item["price"] = self.prices[price_id]
            elif key == "quantity":
                item["quantity"] = value
            elif key == "metadata":
                sub["metadata"] = objects.merge_metadata(sub["metadata"], value)
            elif key in sub:
                sub[key] = value
            else:
                raise KeyError(f"unknown subscription field {key!r}")
        if changes.get("status") == "canceled" and sub["canceled_at"] is None:
            with self.clock():
                sub["canceled_at"] = sub["ended_at"] = objects.now()
        sub["_version"] += 1
        return self.subscription(sub_id)

    def planned_items(self, sub, changes, param):
        """The items after `changes` (Stripe's items[] parameter; `param` names it in errors), validated,
        nothing changed: (item or None for a new one, price, quantity, deleted) each."""
        by_id = {item["id"]: item for item in sub["items"]["data"]}
        planned = {item_id: [item, item["price"], item["quantity"], False] for item_id, item in by_id.items()}
        added = []
        for n, change in enumerate(changes):
            if not isinstance(change, dict):
                raise invalid(f"Invalid object: {param}[{n}]", f"{param}[{n}]")
            if change.get("id") and change["id"] not in by_id:
                raise invalid(f"No such subscription item: '{change['id']}'", f"{param}[{n}][id]", "resource_missing")
            price = None
            if change.get("price"):
                if change["price"] not in self.prices:
                    raise invalid(f"No such price: '{change['price']}'", f"{param}[{n}][price]", "resource_missing")
                price = self.prices[change["price"]]
            quantity = _quantity(change["quantity"], f"{param}[{n}][quantity]") if change.get("quantity") else None
            if not change.get("id"):
                if price is None:
                    raise invalid(f"Missing required param: {param}[{n}][price].", f"{param}[{n}][price]")
                added.append((None, price, quantity or 1, False))
                continue
            entry = planned[change["id"]]
            entry[1] = price or entry[1]
            entry[2] = quantity if quantity is not None else entry[2]
            entry[3] = change.get("deleted") in (True, "true")
        result = [tuple(entry) for entry in planned.values()] + added
        if not any(not deleted for _, _, _, deleted in result):
            raise invalid("A subscription must keep at least one item.", f"{param}[0][deleted]")
        return result

    def _apply_items(self, sub, planned):
        kept = []
        for item, price, quantity, deleted in planned:
            if deleted:
                continue
            if item is None:
                template = sub["items"]["data"][0]
                item = {k: v for k, v in template.items() if k not in ("plan",)}
                item.update(id=objects.new_id("si"), created=self.now(), metadata={})
            item.update(price=price, quantity=quantity)
            item.pop("plan", None)
            kept.append(item)
        sub["items"]["data"] = kept

    def update_subscription(self, sub_id, params):
        """POST /v1/subscriptions/:id, with customer.subscription.updated (and invoice.* when invoicing now)."""
        sub = self._get(self.subscriptions, "subscription", sub_id)
        if sub["status"] in ENDED and set(params) - {"metadata", "cancellation_details"}:
            raise invalid(
                "A canceled subscription can only update its cancellation_details and metadata.",
                conflict="subscription_ended",
            )
        behavior = params.get("proration_behavior", "create_prorations")
        if behavior not in PRORATIONS:
            raise invalid(f"Invalid proration_behavior: must be one of {', '.join(PRORATIONS)}", "proration_behavior")
        planned = self.planned_items(sub, params.get("items") or [], "items") if params.get("items") else None
        before = self.subscription(sub_id)
        period_end = sub["items"]["data"][0]["current_period_end"]
        changes = {}
        if "cancel_at_period_end" in params:
            at_end = params["cancel_at_period_end"] == "true"
            changes.update(
                cancel_at_period_end=at_end,
                cancel_at=period_end if at_end else None,
                canceled_at=self.now() if at_end else None,
            )
        if "cancel_at" in params:
            cancel_at = _quantity(params["cancel_at"], "cancel_at") if params["cancel_at"] != "" else None
            if cancel_at is not None and cancel_at <= self.now():
                raise invalid("cancel_at must be in the future.", "cancel_at")
            if not changes.get("cancel_at_period_end"):  # cancel_at_period_end=true wins: the period end
                changes.update(
                    cancel_at=cancel_at, cancel_at_period_end=False, canceled_at=self.now() if cancel_at else None
                )
        if "pause_collection" in params:
            pause = params["pause_collection"]
            if pause and pause.get("behavior") not in ("keep_as_draft", "mark_uncollectible", "void"):
                raise invalid("Invalid pause_collection[behavior].", "pause_collection[behavior]")
            resumes = pause.get("resumes_at") if pause else None
            changes["pause_collection"] = (
                {"behavior": pause["behavior"], "resumes_at": int(resumes) if resumes else None} if pause else None
            )
        if "metadata" in params:
            changes["metadata"] = params["metadata"] or {}
        prorations, when = [], self.now()
        if planned is not None:
            prorations = self.prorations(sub, planned, when) if behavior != "none" else []
            self._apply_items(sub, planned)
        self.set_subscription(sub_id, **changes)
        if prorations and behavior == "always_invoice":
            lines = sub.pop("_pending", []) + prorations
            inv = self.open_invoice(sub_id, "subscription_update", lines, when, when)
            self.settle(sub_id, inv, sub.get("_failures", 0) if sub["status"] == "past_due" else 0)
        elif prorations:
            sub.setdefault("_pending", []).extend(prorations)
        self.emit_subscription("customer.subscription.updated", sub_id, before)
        return self.subscription(sub_id)

    def cancel_now(self, sub_id):
        """DELETE /v1/subscriptions/:id: ends it at once (customer.subscription.deleted)."""
        sub = self._get(self.subscriptions, "subscription", sub_id)
        if sub["status"] in ENDED:
            raise invalid(
                f"A canceled subscription can only update its cancellation_details and metadata. "
                f"No such subscription: '{sub_id}' is already canceled.",
                conflict="subscription_ended",
            )
        before = self.subscription(sub_id)
        sub.pop("_pending", None)  # Stripe drops pending prorations unless invoice_now
        sub["cancellation_details"] = dict(sub["cancellation_details"], reason="cancellation_requested")
        self.set_subscription(sub_id, status="canceled", cancel_at_period_end=False, cancel_at=None)
        self.emit_subscription("customer.subscription.deleted", sub_id, before)
        return self.subscription(sub_id)

    def resume_paused(self, sub_id):
        """POST /v1/subscriptions/:id/resume: a subscription paused at trial end starts a paid period now."""
        before = self.subscription(sub_id)
        self.set_subscription(sub_id, status="active")
        self.emit_subscription("customer.subscription.resumed", sub_id, before)
        self.emit_subscription("customer.subscription.updated", sub_id, before)
        return self.subscription(sub_id)

    def _subscriptions(self, method, parts, params):
        if len(parts) == 1 and method == "GET":
            status = params.get("status")
            found = [
                s
                for s in self.subscriptions.values()
                if (not params.get("customer") or s["customer"] == params["customer"])
                and (status == "all" or (s["status"] == status if status else s["status"] != "canceled"))
            ]
            listing = objects.page(found, params, "/v1/subscriptions")
            return dict(listing, data=[self.subscription(s["id"]) for s in listing["data"]])
        sub_id = parts[1] if len(parts) > 1 else ""
        sub = self._get(self.subscriptions, "subscription", sub_id)
        if len(parts) == 2 and method == "GET":
            return self.subscription(sub_id)
        if len(parts) == 2 and method == "DELETE":
            return self.cancel_now(sub_id)
        if len(parts) == 2 and method == "POST":
            return self.update_subscription(sub_id, params)
        if len(parts) == 3 and parts[2] == "resume" and method == "POST":
            if sub["status"] != "paused":
                raise invalid("Only subscriptions with status `paused` can be resumed.", conflict="not_paused")
            return self.resume_paused(sub_id)
        raise objects.unrecognized(method, parts)
