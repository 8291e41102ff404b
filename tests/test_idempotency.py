"""Idempotency-Key on POST (SPEC 3.1): replay, conflicts, in-flight duplicates, 5xx not stored, 24 h."""

import asyncio
from datetime import timedelta

import pytest

from handlers.base import ApiHandler, idempotent, missing
from pulse import db, idempotency
from pulse.models import IdempotencyRecord
from tests.support import body_of

CALLS = []


class Charge(ApiHandler):
    @idempotent
    async def post(self):
        body = self.json_body()
        if "amount" not in body:
            raise missing("amount")
        if body.get("slow"):
            await asyncio.sleep(0.3)
        if body.get("boom"):
            raise RuntimeError("stripe exploded")
        CALLS.append(body)
        self.write_json({"charge": len(CALLS), "amount": body["amount"]}, 201)


@pytest.fixture
def app(app):
    CALLS.clear()
    app.add_handlers(r".*", [(r"/api/_test/charge", Charge), (r"/api/_test/refund", Charge)])
    return app


def charge(api, body, key="key-1", **kwargs):
    headers = {"Idempotency-Key": key} if key else {}
    return api("POST", "/api/_test/charge", json_body=body, headers=headers, **kwargs)


@pytest.mark.gen_test
async def test_same_key_same_body_replays_without_running_again(api):
    first = await charge(api, {"amount": 5, "currency": "eur"})
    again = await charge(api, {"currency": "eur", "amount": 5})  # same JSON, other key order
    assert first.code == again.code == 201
    assert body_of(again) == body_of(first) == {"charge": 1, "amount": 5}
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(CALLS) == 1
    assert body_of(await charge(api, {"amount": 5, "currency": "eur"}, key="key-2"))["charge"] == 2


@pytest.mark.gen_test
async def test_same_key_other_body_is_a_conflict(api):
    await charge(api, {"amount": 5})
    response = await charge(api, {"amount": 6})
    assert response.code == 409
    assert body_of(response)["error"]["code"] == "idempotency_conflict"
    assert "different request body" in body_of(response)["error"]["message"]
    assert len(CALLS) == 1


@pytest.mark.gen_test
async def test_each_conflict_says_what_differs(api):
    """QA #13: another endpoint is not "a different request body"; a body change on one endpoint is."""
    await charge(api, {"amount": 5})
    elsewhere = await api("POST", "/api/_test/refund", json_body={"amount": 5}, headers={"Idempotency-Key": "key-1"})
    assert elsewhere.code == 409 and body_of(elsewhere)["error"]["code"] == "idempotency_conflict"
    message = body_of(elsewhere)["error"]["message"]
    assert "different endpoint" in message and "body" not in message, message
    other_body = body_of(await charge(api, {"amount": 6}))["error"]["message"]
    assert "different request body" in other_body and "endpoint (" not in other_body, other_body
    assert len(CALLS) == 1


@pytest.mark.gen_test
async def test_a_record_stored_before_the_endpoint_prefix_still_replays(api, project):
    import hashlib

    legacy = hashlib.sha256(b'POST /api/_test/charge\n{"amount":5}').hexdigest()
    with db.block():
        IdempotencyRecord.create(
            project=project.project, key="key-1", request_hash=legacy, status_code=201, response_body='{"charge": 9}'
        )
    replay = await charge(api, {"amount": 5})
    assert replay.code == 201 and body_of(replay) == {"charge": 9} and not CALLS
    assert (await charge(api, {"amount": 6})).code == 409


@pytest.mark.gen_test
async def test_concurrent_duplicate_is_refused_while_the_first_is_in_flight(api):
    first, second = await asyncio.gather(
        charge(api, {"amount": 5, "slow": True}), charge(api, {"amount": 5, "slow": True})
    )
    codes = sorted([first.code, second.code])
    assert codes == [201, 409]
    loser = first if first.code == 409 else second
    assert body_of(loser)["error"]["code"] == "idempotency_conflict"
    assert "still being processed" in body_of(loser)["error"]["message"]
    assert len(CALLS) == 1
    assert (await charge(api, {"amount": 5, "slow": True})).headers["Idempotent-Replayed"] == "true"


@pytest.mark.gen_test
async def test_client_errors_are_stored_server_errors_are_not(api):
    invalid = await charge(api, {"nope": 1}, key="k-422")
    assert invalid.code == 422
    replay = await charge(api, {"nope": 1}, key="k-422")
    assert replay.code == 422 and replay.headers["Idempotent-Replayed"] == "true"
    assert body_of(replay)["error"]["field"] == "amount"
    failed = await charge(api, {"amount": 1, "boom": True}, key="k-500")
    assert failed.code == 500
    with db.block():
        assert not IdempotencyRecord.select().where(IdempotencyRecord.key == "k-500").exists()
    retried = await charge(api, {"amount": 1, "boom": True}, key="k-500")
    assert retried.code == 500 and "Idempotent-Replayed" not in retried.headers


@pytest.mark.gen_test
async def test_keys_are_per_project(api, make_project):
    other = make_project(name="Other")
    await charge(api, {"amount": 5})
    response = await api(
        "POST",
        "/api/_test/charge",
        json_body={"amount": 7},
        key=other.api_key.api_key,
        headers={"Idempotency-Key": "key-1"},
    )
    assert response.code == 201 and body_of(response)["amount"] == 7
    assert len(CALLS) == 2


@pytest.mark.gen_test
async def test_records_expire_after_24_hours(api, project):
    await charge(api, {"amount": 5})
    with db.block():
        IdempotencyRecord.update(created_at=db.utcnow() - timedelta(hours=24, seconds=1)).execute()
    response = await charge(api, {"amount": 6})  # the old use no longer counts, even with another body
    assert response.code == 201 and body_of(response)["charge"] == 2
    with db.block():
        IdempotencyRecord.update(created_at=db.utcnow() - timedelta(hours=25)).execute()
        assert idempotency.purge() == 1


@pytest.mark.gen_test
async def test_an_abandoned_in_flight_record_is_taken_over(api, project):
    fingerprint = idempotency.request_hash("POST", "/api/_test/charge", b'{"amount": 5}')
    with db.block():
        IdempotencyRecord.create(
            project=project.project,
            key="key-1",
            request_hash=fingerprint,
            created_at=db.utcnow() - timedelta(minutes=3),
        )
    response = await charge(api, {"amount": 5})
    assert response.code == 201 and len(CALLS) == 1


@pytest.mark.gen_test
async def test_bad_keys_and_requests_without_a_key(api):
    response = await charge(api, {"amount": 5}, key="x" * 256)
    assert response.code == 400 and body_of(response)["error"]["field"] == "Idempotency-Key"
    assert (await charge(api, {"amount": 5}, key=None)).code == 201
    assert (await charge(api, {"amount": 5}, key=None)).code == 201
    assert len(CALLS) == 2


class LoggedCharge(Charge):
    async def post(self):
        await super().post()


@pytest.mark.gen_test
async def test_an_overriding_post_calling_super_claims_the_key_once(api, app):
    app.add_handlers(r".*", [(r"/api/_test/logged", LoggedCharge)])
    first = await api("POST", "/api/_test/logged", json_body={"amount": 3}, headers={"Idempotency-Key": "k"})
    again = await api("POST", "/api/_test/logged", json_body={"amount": 3}, headers={"Idempotency-Key": "k"})
    assert first.code == again.code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert len(CALLS) == 1


class PlainCharge(ApiHandler):
    async def post(self):  # no @idempotent: the key means nothing here
        CALLS.append(self.json_body())
        self.write_json({"charge": len(CALLS)}, 201)


@pytest.mark.gen_test
async def test_only_a_post_marked_idempotent_replays(api, app):
    app.add_handlers(r".*", [(r"/api/_test/plain", PlainCharge)])
    for _ in range(2):
        response = await api("POST", "/api/_test/plain", json_body={"amount": 1}, headers={"Idempotency-Key": "k"})
        assert response.code == 201 and "Idempotent-Replayed" not in response.headers
    assert len(CALLS) == 2
    with db.block():
        assert IdempotencyRecord.select().count() == 0
