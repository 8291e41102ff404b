"""The tests' fake Stripe as a stand-alone process: `python -m bench.stripe_server LATENCY`.

Prints the fake's URL and a control URL (`GET /latency?seconds=S` changes the answer delay).
"""

import asyncio
import logging
import sys

import tornado.web

from tests.fake_stripe import FakeStripe


class LatencyHandler(tornado.web.RequestHandler):
    def initialize(self, fake):
        self.fake = fake

    def get(self):
        self.fake.latency = float(self.get_query_argument("seconds"))
        self.finish({"latency": self.fake.latency})


async def main(latency):
    fake = FakeStripe().start()
    fake.latency = latency
    control = tornado.web.Application([(r"/latency", LatencyHandler, {"fake": fake})])
    server = control.listen(0, "127.0.0.1")
    port = next(iter(server._sockets.values())).getsockname()[1]
    sys.stdout.write(f"{fake.url} http://127.0.0.1:{port}\n")
    sys.stdout.flush()
    while True:
        await asyncio.sleep(5)
        fake.requests.clear()  # the request log is for tests; a long benchmark must not grow it


if __name__ == "__main__":
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    asyncio.run(main(float(sys.argv[1])))
