"""API keys, token hashing, encryption at rest and masking."""

import re

import pytest

from pulse import apikeys, db, security
from pulse.models import ApiKey, Project


def test_api_key_format_and_storage(app, project):
    raw = project.api_key.api_key
    assert re.fullmatch(r"pp_live_[0-9A-Za-z]{40}", raw)
    with db.block():
        row = ApiKey.get(ApiKey.public_id == project.api_key.key_id)
    assert row.key_hash == security.hash_token(raw) and raw not in (row.key_hash, row.prefix)
    assert raw.startswith(row.prefix) and len(row.prefix) == len("pp_live_") + 6


def test_authenticate_refuses_revoked_expired_and_unknown(app, project):
    raw = project.api_key.api_key
    with db.block():
        assert apikeys.authenticate(raw)[1].public_id == project.project.public_id
        assert apikeys.authenticate(raw[:-1] + ("A" if raw[-1] != "A" else "B")) is None
        assert apikeys.authenticate("") is None
        assert apikeys.authenticate("Bearer " + raw) is None
        key = ApiKey.get(ApiKey.public_id == project.api_key.key_id)
        apikeys.revoke(key)
        assert apikeys.authenticate(raw) is None
        other = apikeys.issue(project.project, label="temp", expires_at=db.utcnow())
        assert apikeys.authenticate(other.api_key) is None


def test_rotation_keeps_the_old_key_for_the_grace(app, project):
    with db.block():
        key = ApiKey.get(ApiKey.public_id == project.api_key.key_id)
        new = apikeys.rotate(key, grace_seconds=3600)
        assert apikeys.authenticate(project.api_key.api_key) is not None
        assert apikeys.authenticate(new.api_key) is not None
        assert apikeys.status(ApiKey.get_by_id(key.id)) == "expiring"


def test_last_used_is_not_written_on_every_request(app, project, monkeypatch):
    writes = []
    original = ApiKey.update

    def counting_update(*args, **kwargs):
        writes.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(ApiKey, "update", counting_update)
    monkeypatch.setattr(apikeys, "_last_used_written", {})
    with db.block():
        for _ in range(20):
            assert apikeys.authenticate(project.api_key.api_key) is not None
        assert ApiKey.get(ApiKey.public_id == project.api_key.key_id).last_used_at is not None
    assert len([w for w in writes if "last_used_at" in w]) == 1


def test_stripe_secrets_are_encrypted_at_rest(app, make_project, box):
    secret = "sk_test_" + "x" * 24 + "a1b2"
    created = make_project(stripe_secret_key=secret, stripe_webhook_secret="whsec_" + "y" * 32)
    with db.block():
        row = Project.get_by_id(created.project.id)
    assert secret not in row.stripe_secret_key and "whsec_" not in row.stripe_webhook_secret
    assert box.decrypt(row.stripe_secret_key) == secret
    with pytest.raises(ValueError):
        security.SecretBox("another-secret-key-entirely").decrypt(row.stripe_secret_key)


@pytest.mark.parametrize(
    "value,masked",
    [
        ("sk_live_51HxYzAbCdEfGhIjKa1b2", "sk_live_…a1b2"),
        ("whsec_abcdefghijklmnopqrstuvwxyz12", "whsec_…yz12"),
        ("sk_test_short", "sk_test_…"),
        ("", ""),
    ],
)
def test_mask_secret(value, masked):
    assert security.mask_secret(value) == masked


def test_password_hashing():
    hashed = security.hash_password("correct horse")
    assert security.check_password("correct horse", hashed)
    assert not security.check_password("wrong horse", hashed)
    assert not security.check_password("anything", security.dummy_password_hash())
