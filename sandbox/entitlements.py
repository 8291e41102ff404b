"""Products, their Features and customers' active entitlements in the simulator (Stripe Entitlements).

A customer is entitled to the Features attached to the Products of its subscriptions that are active,
trialing or past_due. Whenever a change moves a customer's active features, the simulator sends
`entitlements.active_entitlement_summary.updated`, as Stripe does (Simulator.run compares before/after).
Features and their attachments are part of the account's state, kept like the rest.
"""

import hashlib

from sandbox import objects
from sandbox.objects import invalid

EVENT = "entitlements.active_entitlement_summary.updated"
ENTITLED = ("active", "trialing", "past_due")


def product(product_id, name):
    return {
        "id": product_id,
        "object": "product",
        "active": True,
        "created": objects.now(),
        "default_price": None,
        "description": None,
        "images": [],
        "livemode": False,
        "marketing_features": [],
        "metadata": {},
        "name": name,
        "package_dimensions": None,
        "shippable": None,
        "statement_descriptor": None,
        "tax_code": None,
        "type": "service",
        "unit_label": None,
        "updated": objects.now(),
        "url": None,
    }


def feature(lookup_key, name=None):
    return {
        "id": objects.new_id("feat_test"),
        "object": "entitlements.feature",
        "active": True,
        "livemode": False,
        "lookup_key": lookup_key,
        "metadata": {},
        "name": name or lookup_key,
    }


def active_entitlement(customer_id, feat):
    digest = hashlib.sha256(f"{customer_id}:{feat['id']}".encode()).hexdigest()[:24]
    return {
        "id": f"ent_test_{digest}",
        "object": "entitlements.active_entitlement",
        "feature": feat["id"],
        "livemode": False,
        "lookup_key": feat["lookup_key"],
    }


class Entitlements:
    """Products, Features and active entitlements of a simulated account (a part of sandbox.core.Simulator)."""

    # ------------------------------------------------------------ products and features

    def product(self, product_id, param="id"):
        """A product: one made by this account, or one a price refers to (made on first reference)."""
        if product_id not in self.products:
            in_use = [item.get("price") or {} for sub in self.subscriptions.values() for item in sub["items"]["data"]]
            price = next((p for p in [*self.prices.values(), *in_use] if p.get("product") == product_id), None)
            if price is None:
                raise objects.missing("product", product_id, param)
            with self.clock():
                self.products[product_id] = product(product_id, price.get("lookup_key") or price["id"])
        return self.products[product_id]

    def feature_by_key(self, lookup_key, name=None):
        """The Feature with this lookup_key, created when new."""
        found = next((f for f in self.features.values() if f["lookup_key"] == lookup_key), None)
        if found is None:
            found = self._store(self.features, feature(lookup_key, name))
        return found

    def _product_of(self, price_or_product):
        if price_or_product.startswith("prod_"):
            return self.product(price_or_product, "product")
        return self.product(self._price(price_or_product, "month")["product"])

    def attach_feature(self, price_or_product, lookup_key, name=None):
        """Attach a Feature (by lookup_key, created when new) to a Product (prod_…, or a price's: a price id
        unknown yet is made, as checkout makes it), as the Dashboard does. Returns the product_feature."""
        prod = self._product_of(price_or_product)
        feat = self.feature_by_key(lookup_key, name)
        return self._attach(prod["id"], feat)

    def detach_feature(self, price_or_product, lookup_key):
        """Remove a Feature from a Product; returns Stripe's deleted product_feature, or None if not attached."""
        prod = self._product_of(price_or_product)
        for attached in list(self.product_features.values()):
            if attached["_product"] == prod["id"] and attached["entitlement_feature"]["lookup_key"] == lookup_key:
                return self._detach(attached["id"])
        return None

    def _attach(self, product_id, feat):
        for attached in self.product_features.values():
            if attached["_product"] == product_id and attached["entitlement_feature"]["id"] == feat["id"]:
                return objects.public(attached)
        attached = {
            "id": objects.new_id("prodft"),
            "object": "product_feature",
            "entitlement_feature": dict(feat),
            "livemode": False,
            "_product": product_id,
        }
        return objects.public(self._store(self.product_features, attached))

    def _detach(self, attached_id):
        self.product_features.pop(attached_id)
        return {"id": attached_id, "object": "product_feature", "deleted": True}

    # ------------------------------------------------------------ entitlements

    def _entitled_features(self):
        """customer id -> its active features (by attachment order), for every customer with any."""
        by_product = {}
        for attached in sorted(self.product_features.values(), key=lambda a: a["_seq"]):
            feat = self.features.get(attached["entitlement_feature"]["id"]) or attached["entitlement_feature"]
            if feat["active"]:
                by_product.setdefault(attached["_product"], []).append(feat)
        found = {}
        for sub in sorted(self.subscriptions.values(), key=lambda s: s.get("_seq", 0)):
            if sub["status"] not in ENTITLED:
                continue
            keys = found.setdefault(sub["customer"], {})
            for item in sub["items"]["data"]:
                product_id = (item.get("price") or item.get("plan") or {}).get("product")
                for feat in by_product.get(product_id, []):
                    keys.setdefault(feat["lookup_key"], feat)
        return {customer: list(feats.values()) for customer, feats in found.items() if feats}

    def active_features(self, customer_id):
        """Lookup keys of the customer's active entitlements."""
        return [feat["lookup_key"] for feat in self._entitled_features().get(customer_id, [])]

    def active_entitlements(self, customer_id):
        return [active_entitlement(customer_id, feat) for feat in self._entitled_features().get(customer_id, [])]

    def entitlement_snapshot(self):
        """Every customer's active feature ids, to compare after a change (announce_entitlements)."""
        return {customer: [f["id"] for f in feats] for customer, feats in self._entitled_features().items()}

    def announce_entitlements(self, before):
        """entitlements.active_entitlement_summary.updated for each customer whose active features changed."""
        after = self.entitlement_snapshot()
        for customer_id in sorted(set(before) | set(after)):
            if before.get(customer_id, []) == after.get(customer_id, []) or customer_id not in self.customers:
                continue
            previous = [
                active_entitlement(customer_id, self.features.get(feat_id) or {"id": feat_id, "lookup_key": None})
                for feat_id in before.get(customer_id, [])
            ]
            summary = {
                "object": "entitlements.active_entitlement_summary",
                "customer": customer_id,
                "entitlements": self._listing(self.active_entitlements(customer_id)),
                "livemode": False,
            }
            self.emit(EVENT, summary, {"entitlements": self._listing(previous)})

    @staticmethod
    def _listing(data):
        return {"object": "list", "data": data, "has_more": False, "url": "/v1/entitlements/active_entitlements"}

    # ------------------------------------------------------------ the API

    def _entitlements(self, method, parts, params):
        if parts == ["entitlements", "active_entitlements"] and method == "GET":
            if not params.get("customer"):
                raise invalid("Missing required param: customer.", "customer")
            if params["customer"] not in self.customers:
                raise invalid(f"No such customer: '{params['customer']}'", "customer", "resource_missing")
            found = self.active_entitlements(params["customer"])
            return objects.page(found, params, "/v1/entitlements/active_entitlements")
        if parts[:2] == ["entitlements", "features"]:
            return self._features(method, parts[2:], params)
        raise objects.unrecognized(method, parts)

    def _features(self, method, rest, params):
        if not rest and method == "POST":
            for name in ("name", "lookup_key"):
                if not params.get(name):
                    raise invalid(f"Missing required param: {name}.", name)
            if any(f["lookup_key"] == params["lookup_key"] for f in self.features.values()):
                raise invalid(
                    f"A feature with lookup_key '{params['lookup_key']}' already exists.",
                    "lookup_key",
                    "resource_already_exists",
                )
            created = self._store(self.features, feature(params["lookup_key"], params["name"]))
            created["metadata"] = objects.merge_metadata({}, params.get("metadata"))
            return objects.public(created)
        if not rest and method == "GET":
            found = [
                f
                for f in self.features.values()
                if (not params.get("lookup_key") or f["lookup_key"] == params["lookup_key"])
                and (params.get("archived") == "true") != f["active"]
            ]
            listing = objects.page(found, params, "/v1/entitlements/features")
            return dict(listing, data=[objects.public(f) for f in listing["data"]])
        if len(rest) == 1:
            feat = self._get(self.features, "feature", rest[0])
            if method == "POST":
                if "name" in params:
                    feat["name"] = params["name"]
                if "active" in params:
                    feat["active"] = params["active"] == "true"
                if "metadata" in params:
                    feat["metadata"] = objects.merge_metadata(feat["metadata"], params["metadata"] or {})
            return objects.public(feat)
        raise objects.unrecognized(method, ["entitlements", "features", *rest])

    def _products(self, method, parts, params):
        if len(parts) < 2:
            raise objects.unrecognized(method, parts)
        prod = self.product(parts[1])
        if len(parts) == 2 and method == "GET":
            return objects.public(prod)
        if parts[2:3] != ["features"]:
            raise objects.unrecognized(method, parts)
        if len(parts) == 3 and method == "POST":
            feat_id = params.get("entitlement_feature")
            if not feat_id:
                raise invalid("Missing required param: entitlement_feature.", "entitlement_feature")
            if feat_id not in self.features:
                raise invalid(f"No such feature: '{feat_id}'", "entitlement_feature", "resource_missing")
            return self._attach(prod["id"], self.features[feat_id])
        if len(parts) == 3 and method == "GET":
            found = [a for a in self.product_features.values() if a["_product"] == prod["id"]]
            listing = objects.page(found, params, f"/v1/products/{prod['id']}/features")
            return dict(listing, data=[objects.public(a) for a in listing["data"]])
        if len(parts) == 4:
            attached = self.product_features.get(parts[3])
            if attached is None or attached["_product"] != prod["id"]:
                self._missing("product_feature", parts[3])
            return self._detach(parts[3]) if method == "DELETE" else objects.public(attached)
        raise objects.unrecognized(method, parts)
