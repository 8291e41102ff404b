"""The tests' fake Stripe as a stand-alone process: `python -m bench.stripe_server LATENCY` prints its URL."""

import asyncio
import logging
import sys

from tests.fake_stripe import FakeStripe


async def main(latency):
    fake = FakeStripe().start()
    fake.latency = latency
    sys.stdout.write(fake.url + "\n")
    sys.stdout.flush()
    while True:
        await asyncio.sleep(5)
        fake.requests.clear()  # the request log is for tests; a long benchmark must not grow it


if __name__ == "__main__":
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    asyncio.run(main(float(sys.argv[1])))
