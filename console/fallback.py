"""The console's catch-all 404: registered after every other console route."""

from console.base import ConsoleNotFoundHandler

default_handlers = [
    (r"/console/.*", ConsoleNotFoundHandler),
]
