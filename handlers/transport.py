"""HTTPS for every page (SPEC 3.1): who the client is, whether it came over TLS, redirects, HSTS."""

import ipaddress

import tornado.web
from tornado.netutil import is_valid_ip

HSTS = "max-age=31536000; includeSubDomains"
# Any of these means a proxy stands between us and the client: loopback is then not the client.
FORWARDING_HEADERS = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Real-Ip", "X-Scheme", "Forwarded")


def _last(value):
    """The right-most entry of a comma list: the one our own proxy appended."""
    return value.split(",")[-1].strip()


def client_ip(request, trust_proxy):
    """The client's address: X-Forwarded-For / X-Real-Ip when the proxy is trusted, else the peer.

    With trust_proxy Tornado's xheaders already rewrote remote_ip; reading the headers here
    gives the same answer and also holds for servers built without xheaders (tests).
    """
    if trust_proxy:
        # Same precedence as Tornado's xheaders, so both paths agree.
        forwarded = request.headers.get("X-Real-Ip") or _last(request.headers.get("X-Forwarded-For", ""))
        if forwarded and is_valid_ip(forwarded):
            return forwarded
    return request.remote_ip or ""


def _is_loopback(ip):
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def over_https(request, config):
    """True when the request arrived over TLS (per X-Forwarded-Proto only when the proxy is trusted)."""
    if config.trust_proxy:
        proto = _last(request.headers.get("X-Scheme") or request.headers.get("X-Forwarded-Proto") or "").lower()
        if proto in ("http", "https"):
            return proto == "https"
    return request.protocol == "https"


def is_secure(request, config):
    """True when the request arrived over HTTPS or counts as such (a loopback client, no proxy)."""
    if over_https(request, config):
        return True
    has_forwarding = any(name in request.headers for name in FORWARDING_HEADERS)
    return not has_forwarding and _is_loopback(request.remote_ip or "")


def redirect_target(request, config):
    """The https:// URL to send a plain-HTTP request to, or None when it may proceed."""
    if not config.force_https or is_secure(request, config):
        return None
    return "https://" + request.host + request.uri


class HttpsRedirectHandler(tornado.web.RequestHandler):
    """Answers every method with a redirect to the https URL: 301 for GET/HEAD, 308 otherwise."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    def initialize(self, url):
        self.url = url

    def check_xsrf_cookie(self):
        """Nothing is done with the request: no XSRF check needed before redirecting it."""

    def prepare(self):
        self.set_header("Location", self.url)
        self.set_header("Cache-Control", "no-store")
        self.set_status(301 if self.request.method in ("GET", "HEAD") else 308)
        self.finish()


class HstsTransform(tornado.web.OutputTransform):
    """Adds Strict-Transport-Security to every response sent over HTTPS (API, console, static)."""

    config = None

    def __init__(self, request):
        super().__init__(request)
        self.secure = self.config is not None and over_https(request, self.config)

    def transform_first_chunk(self, status_code, headers, chunk, finishing):
        if self.secure:
            headers["Strict-Transport-Security"] = HSTS
        return status_code, headers, chunk


def hsts_transform(config):
    """An HstsTransform class bound to `config`, for Application(transforms=[...])."""
    return type("BoundHstsTransform", (HstsTransform,), {"config": config})
