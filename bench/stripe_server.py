"""The tests' fake Stripe as a stand-alone process: `python -m bench.stripe_server LATENCY`.

Prints the fake's URL and a control URL (`GET /latency?seconds=S` changes the answer delay,
`GET /customers?prefix=P&count=N` adds customers).
"""

import asyncio
import logging
import sys

import tornado.web

from tests import fake_stripe_objects as objects
from tests.fake_stripe import FakeStripe


class CustomersHandler(tornado.web.RequestHandler):
    """`GET /customers?prefix=P&count=N`: Stripe customers cus_P0..cus_P{N-1}, as the seeded rows name them."""

    def initialize(self, fake):
        self.fake = fake

    def get(self):
        prefix, count = self.get_query_argument("prefix"), int(self.get_query_argument("count"))
        for i in range(count):
            customer = objects.customer({"email": f"{prefix}{i}@example.com"})
            customer["id"] = f"cus_{prefix}{i}"
            self.fake.customers[customer["id"]] = customer
        self.finish({"customers": count})


class LatencyHandler(tornado.web.RequestHandler):
    def initialize(self, fake):
        self.fake = fake

    def get(self):
        self.fake.latency = float(self.get_query_argument("seconds"))
        self.finish({"latency": self.fake.latency})


async def main(latency):
    fake = FakeStripe().start()
    fake.latency = latency
    control = tornado.web.Application(
        [(r"/latency", LatencyHandler, {"fake": fake}), (r"/customers", CustomersHandler, {"fake": fake})]
    )
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
