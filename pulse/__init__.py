"""PaymentPulse: a self-hosted, multi-tenant Stripe billing gateway."""

__version__ = "0.1.0"
