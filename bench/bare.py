"""The yardstick: a bare Tornado handler answering a constant JSON body (`python -m bench.bare PORT FILE`)."""

import asyncio
import sys

import tornado.web


class ConstantHandler(tornado.web.RequestHandler):
    """Returns the body it was given, as JSON, with no auth and no database."""

    def initialize(self, body):
        self.body = body

    def get(self):
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(self.body)


async def main(port, body):
    app = tornado.web.Application([(r"/.*", ConstantHandler, {"body": body})], log_function=lambda handler: None)
    app.listen(port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    with open(sys.argv[2], "rb") as handle:
        asyncio.run(main(int(sys.argv[1]), handle.read()))
