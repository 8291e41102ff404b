"""Stripe's object shapes for tests: the simulator's builders (sandbox/objects.py), under their old import path."""

from sandbox.objects import *  # noqa: F401,F403
