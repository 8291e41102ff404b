"""API keys: list, create, rotate with a grace period, revoke (the new key is shown once).

Revoking and rotating with no grace stop a key at once, so both first answer with a confirmation page
(a plain form, no JavaScript needed); only a POST carrying `confirmed=yes` acts.
"""

import tornado.web

from console.base import PID, ProjectHandler
from pulse import apikeys
from pulse.db import block, database

GRACES = {
    "now": ("now", 0),
    "1h": ("after 1 hour", 3600),
    "24h": ("after 24 hours", 86400),
    "7d": ("after 7 days", 7 * 86400),
}


class KeysPage(ProjectHandler):
    """The keys page, with an optional once-only new key, a notice and an error."""

    section = "keys"

    def show(self, status=200, new_key=None, new_key_note="", error="", done=""):
        with block():
            keys = apikeys.keys_of(self.project)
        self.render_page(
            "keys.html",
            status=status,
            keys=keys,
            graces=GRACES,
            new_key=new_key,
            new_key_note=new_key_note,
            error=error,
            done=done,
        )


class KeysHandler(KeysPage):
    def get(self, project_id):
        done = ""
        revoked = self.get_query_argument("revoked", "")
        if revoked:
            with block():
                key = apikeys.key_of(self.project, revoked)
            if key is not None:
                done = f"Key “{key.label or key.prefix}” ({key.prefix}…) was revoked; requests with it now get 401."
        self.show(done=done)

    def post(self, project_id):
        label = self.get_body_argument("label", "").strip()[:100]
        if not label:
            self.show(status=400, error="Give the key a label, e.g. “production”.")
            return
        with block(), database.atomic():
            issued = apikeys.issue(self.project, label=label)
            self.audit("api_key.created", project=self.project, key_id=issued.key_id, prefix=issued.prefix, label=label)
        # The raw key lives only in this response: it is not stored and cannot be shown again.
        self.show(status=201, new_key=issued, new_key_note=f"New key “{label}” created.")


class KeyActionHandler(KeysPage):
    def key(self, key_id):
        with block():
            key = apikeys.key_of(self.project, key_id)
        if key is None:
            raise tornado.web.HTTPError(404)
        return key

    def post(self, project_id, key_id, action):
        key = self.key(key_id)
        if apikeys.status(key) in ("revoked", "expired"):
            self.show(status=409, error="That key no longer works; there is nothing to " + action + ".")
            return
        grace = self.get_body_argument("grace", "") if action == "rotate" else "now"
        if grace not in GRACES:
            self.show(status=400, error="Choose when the old key stops working.")
            return
        if grace == "now" and self.get_body_argument("confirmed", "") != "yes":
            self.render_page("confirm_key.html", key=key, action=action, grace=grace)
            return
        if action == "revoke":
            with block(), database.atomic():
                apikeys.revoke(key)
                self.audit("api_key.revoked", project=self.project, key_id=key.public_id, prefix=key.prefix)
            self.redirect(self.project_url(f"keys?revoked={key.public_id}"), status=303)
            return
        words, seconds = GRACES[grace]
        with block(), database.atomic():
            issued = apikeys.rotate(key, seconds)
            self.audit(
                "api_key.rotated",
                project=self.project,
                key_id=key.public_id,
                prefix=key.prefix,
                new_key_id=issued.key_id,
                new_prefix=issued.prefix,
                grace=grace,
            )
        self.show(
            status=201,
            new_key=issued,
            new_key_note=f"Key “{key.label}” rotated; the old key {key.prefix}… stops working {words}.",
        )


default_handlers = [
    (PID + r"/keys", KeysHandler),
    (PID + r"/keys/(key_[0-9A-Za-z]+)/(rotate|revoke)", KeyActionHandler),
]
