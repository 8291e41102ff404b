"""PaymentPulse benchmark suite (SPEC 6): `make bench` or `python -m bench --help`."""
