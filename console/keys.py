"""API keys: list, create, rotate with a grace period, revoke (the new key is shown once)."""

import tornado.web

from console.base import ProjectHandler
from console.dashboard import PID
from pulse import apikeys
from pulse.db import block, database
from pulse.models import ApiKey

GRACES = {"now": ("now", 0), "1h": ("after 1 hour", 3600), "24h": ("after 24 hours", 86400),
          "7d": ("after 7 days", 7 * 86400)}


class KeysPage(ProjectHandler):
    """The keys page, with an optional once-only new key and an error."""

    section = "keys"

    def keys(self):
        with block():
            rows = list(ApiKey.select().where(ApiKey.project == self.project).order_by(ApiKey.id.desc()))
        for row in rows:
            row.state = apikeys.status(row)
        return rows

    def show(self, status=200, new_key=None, new_key_note="", error=""):
        self.render_page("keys.html", status=status, keys=self.keys(), graces=GRACES, new_key=new_key,
                         new_key_note=new_key_note, error=error)



class KeysHandler(KeysPage):
    def get(self, project_id):
        self.show()

    def post(self, project_id):
        label = self.get_body_argument("label", "").strip()[:100]
        if not label:
            self.show(status=400, error="Give the key a label, e.g. “production”.")
            return
        with block(), database.atomic():
            issued = apikeys.issue(self.project, label=label)
            self.audit("api_key.created", project=self.project, key_id=issued.key_id, prefix=issued.prefix,
                       label=label)
        # The raw key lives only in this response: it is not stored and cannot be shown again.
        self.show(status=201, new_key=issued, new_key_note=f"New key “{label}” created.")


class KeyActionHandler(KeysPage):
    def key(self, key_id):
        with block():
            key = ApiKey.get_or_none(ApiKey.public_id == key_id, ApiKey.project == self.project)
        if key is None:
            raise tornado.web.HTTPError(404)
        return key

    def post(self, project_id, key_id, action):
        key = self.key(key_id)
        page = self.show
        if apikeys.status(key) in ("revoked", "expired"):
            page(status=409, error="That key no longer works; there is nothing to " + action + ".")
            return
        if action == "revoke":
            with block(), database.atomic():
                apikeys.revoke(key)
                self.audit("api_key.revoked", project=self.project, key_id=key.public_id, prefix=key.prefix)
            self.redirect(self.project_url("keys?notice=key_revoked"), status=303)
            return
        grace = self.get_body_argument("grace", "")
        if grace not in GRACES:
            page(status=400, error="Choose when the old key stops working.")
            return
        words, seconds = GRACES[grace]
        with block(), database.atomic():
            key.project = self.project
            issued = apikeys.rotate(key, seconds)
            self.audit("api_key.rotated", project=self.project, key_id=key.public_id, prefix=key.prefix,
                       new_key_id=issued.key_id, new_prefix=issued.prefix, grace=grace)
        page(status=201, new_key=issued,
             new_key_note=f"Key “{key.label}” rotated; the old key {key.prefix}… stops working {words}.")


default_handlers = [
    (PID + r"/keys", KeysHandler),
    (PID + r"/keys/(key_[0-9A-Za-z]+)/(rotate|revoke)", KeyActionHandler),
]
