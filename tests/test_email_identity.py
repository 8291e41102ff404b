"""Console accounts keyed by the normalised email (security review M3), and migration 4's clean-up."""

import json
import logging
import os
import subprocess
import sys

import peewee as pw
import pytest

from pulse import db, emails, migrations, projects
from pulse.models import AuditLog, Membership, Project, User
from tests.console_support import Console
from tests.live_server import ROOT
from tests.migration_support import back_to_version_1

VICTIM = "victim@victim.test"
FULL_WIDTH = "ｖｉｃｔｉｍ@victim.test"
ACCENTED = "vïctim@victim.test"
CYRILLIC = "vісtim@victim.test"  # Cyrillic і and с


def test_keys_and_skeletons():
    assert emails.key("  ＶＩＣＴＩＭ@Victim.TEST ") == VICTIM
    assert emails.key("STRASSE@x.test") == emails.key("straße@x.test") == "strasse@x.test"
    assert emails.key(ACCENTED) != VICTIM and emails.skeleton(ACCENTED) == VICTIM
    assert emails.key(CYRILLIC) != VICTIM and emails.skeleton(CYRILLIC) == VICTIM
    assert emails.is_valid("a@b.co") and not emails.is_valid("a b@c.de") and not emails.is_valid("a@b\n.co")
    assert not emails.is_valid("x" * 250 + "@b.co")


@pytest.fixture
def cli_env(db_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env.update(PULSE_DATABASE_URL=db_url, PULSE_SECRET_KEY="cli-test-secret-0123456789")
    return env


def cli(env, *args):
    done = subprocess.run(
        [sys.executable, "run.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_the_reviews_look_alike_cannot_capture_a_project_created_later(cli_env):
    """M3 as reported: Mallory registers the full-width form, then Victim Corp is created."""
    mallory = cli(
        cli_env,
        "create-project",
        "Mallory Shop",
        "--admin-email",
        FULL_WIDTH,
        "--admin-password",
        "MalloryPass123",
        "--json",
    )
    assert mallory.returncode == 2 and "full-width" in mallory.stderr, mallory.stderr
    victim = cli(cli_env, "create-project", "Victim Corp", "--admin-email", VICTIM, "--json")
    assert victim.returncode == 0, victim.stderr
    data = json.loads(victim.stdout)
    assert data["admin_email"] == VICTIM and data["admin_password"]  # a new account of her own
    for look_alike in (ACCENTED, CYRILLIC):
        refused = cli(
            cli_env,
            "create-project",
            "Mallory Shop",
            "--admin-email",
            look_alike,
            "--admin-password",
            "MalloryPass123",
            "--json",
        )
        assert refused.returncode == 2 and "looks like the existing account" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    # The full-width form of an existing address is that account: no new one, no password given.
    same = json.loads(cli(cli_env, "create-project", "Second", "--admin-email", FULL_WIDTH, "--json").stdout)
    assert same["admin_email"] == VICTIM and "admin_password" not in same


def test_a_look_alike_registered_first_blocks_the_real_address_instead_of_capturing_it(app, make_project):
    make_project(name="Mallory Shop", admin_email=ACCENTED, admin_password="MalloryPass123")
    with pytest.raises(projects.Refused, match="looks like the existing account"):
        make_project(name="Victim Corp", admin_email=VICTIM)
    with db.block():
        assert Project.select().where(Project.name == "Victim Corp").count() == 0
        assert User.select().count() == 1


@pytest.mark.gen_test(timeout=60)
async def test_sign_in_matches_the_key_exactly(http_client, base_url, make_project):
    """Width and case variants are the account; accented look-alikes are not (MySQL's collation aliased them)."""
    make_project(name="Victim Corp", admin_email=VICTIM, admin_password="victim-password-1")
    for typed, expected in (
        (" ＶＩＣＴＩＭ@Victim.test", 302),
        (VICTIM.upper(), 302),
        (ACCENTED, 401),
        (CYRILLIC, 401),
        ("victim@victim.test\u200b", 401),
    ):
        response = await Console(http_client, base_url).login(typed, "victim-password-1")
        assert response.code == expected, typed


def test_migration_4_keys_accounts_and_flags_look_alikes(db_url, caplog):
    db.bind(db_url)
    with db.block() as database:
        project = Project.create(public_id="proj_m4", name="Victim Corp")
        back_to_version_1(database)
        insert = pw.Table("user", ("email", "password_hash", "created_at", "password_changed_at")).bind(database)
        now = db.utcnow()
        # As stored by the old code: lower-cased, not normalised. MySQL's unique index (unicode_ci)
        # had already merged the full-width form into one row: Mallory's, holding Victim Corp.
        rows = [FULL_WIDTH, "alice@x.test"] if db.is_mysql() else [VICTIM, FULL_WIDTH, "alice@x.test"]
        for email in rows:
            insert.insert(
                email=email, password_hash="$2b$04$" + "x" * 53, created_at=now, password_changed_at=now
            ).execute()
        ids = {email: user_id for user_id, email in User.select(User.id, User.email).tuples()}
        pw.Table("membership", ("user_id", "project_id", "role", "created_at")).bind(database).insert(
            user_id=ids[rows[0]], project_id=project.id, role="admin", created_at=now
        ).execute()
    assert migrations.current_version() == 1
    with caplog.at_level(logging.WARNING, logger="pulse.migrations"):
        assert "console accounts keyed by normalised email" in migrations.migrate_database()
    with db.block():
        keys = {user.email: user.email_key for user in User.select()}
        flagged = [json.loads(row.detail) for row in AuditLog.select().where(AuditLog.action == "user.email_flagged")]
        assert Membership.select().count() == 1  # nothing is deleted or moved
    assert keys["alice@x.test"] == "alice@x.test"
    assert keys[FULL_WIDTH] is None  # the full-width account cannot sign in any more
    if not db.is_mysql():
        assert keys[VICTIM] == VICTIM
    assert [(f["user_id"], f["email"]) for f in flagged] == [(ids[FULL_WIDTH], FULL_WIDTH)]
    assert "full-width" in flagged[0]["reason"]
    assert any(str(ids[FULL_WIDTH]) in r.getMessage() and "cannot sign in" in r.getMessage() for r in caplog.records)
    if db.is_mysql():  # the added column compares byte for byte, as on a fresh database
        with db.block() as database:
            collation = database.execute_sql(
                "SELECT collation_name FROM information_schema.columns WHERE table_schema = DATABASE() "
                "AND table_name = 'user' AND column_name = 'email_key'"
            ).fetchone()[0]
        assert collation.endswith("_bin"), collation
    with db.block():
        assert projects.find_user(VICTIM) == (User.get(User.email == VICTIM) if not db.is_mysql() else None)
        with pytest.raises(pw.IntegrityError), db.database.atomic():
            User.create(email="alice2", email_key="alice@x.test", password_hash="x")


def test_duplicates_of_one_key_keep_the_oldest_plain_account():
    keys, flagged = migrations.email_identity_plan([(3, "bob@x.test"), (1, "ｂｏｂ@x.test"), (2, "bob@x.test ")])
    assert keys == {2: "bob@x.test"}
    assert sorted((i, reason.split()[0]) for i, _, _, reason in flagged) == [(1, "stored"), (3, "another")]
