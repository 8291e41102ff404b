"""PaymentPulse's built-in Stripe simulator: the API, hosted pages, clock and event delivery of sandbox projects."""
