"""Customer exports from the console (wired to pulse.export)."""

default_handlers = []
