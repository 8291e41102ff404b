"""Secrets: API keys and tokens, encryption at rest, passwords, masking."""

import asyncio
import base64
import hashlib
import hmac
import os
import secrets
import string
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import bcrypt
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

BASE62 = string.digits + string.ascii_letters
API_KEY_PREFIX = "pp_live_"
TEST_KEY_PREFIX = "pp_test_"  # a sandbox project's keys (SPEC 8)
API_KEY_RANDOM_LENGTH = 40  # ~238 bits
DISPLAY_CHARS = 6
T = TypeVar("T")


def random_base62(length: int) -> str:
    """`length` characters from a CSPRNG over [0-9A-Za-z]."""
    return "".join(secrets.choice(BASE62) for _ in range(length))


def public_id(kind: str, length: int = 16) -> str:
    """A public identifier such as `proj_7Gx2…`."""
    return f"{kind}_{random_base62(length)}"


def hash_token(raw: str) -> str:
    """SHA-256 hex of a random token; a high-entropy key needs no slow hash."""
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def new_api_key(prefix: str = API_KEY_PREFIX) -> tuple[str, str, str]:
    """Return (raw key, display prefix, hash); `prefix` is pp_live_ or pp_test_. Shown once, never stored."""
    raw = prefix + random_base62(API_KEY_RANDOM_LENGTH)
    return raw, raw[: len(prefix) + DISPLAY_CHARS], hash_token(raw)


def looks_like_api_key(raw: str | None) -> bool:
    """Cheap shape check before touching the database."""
    body = raw[len(API_KEY_PREFIX) :] if raw and raw.startswith((API_KEY_PREFIX, TEST_KEY_PREFIX)) else ""
    return 32 <= len(body) <= 128 and all(ch in BASE62 for ch in body)


def same_hash(expected: str, actual: str) -> bool:
    """Constant-time comparison of two hex digests."""
    return hmac.compare_digest(expected.encode("ascii"), actual.encode("ascii"))


def new_session_token() -> tuple[str, str]:
    """Return (raw token for the cookie, hash to store)."""
    raw = secrets.token_urlsafe(32)
    return raw, hash_token(raw)


class SecretBox:
    """Fernet encryption of stored Stripe secrets, keyed from PULSE_SECRET_KEY via HKDF."""

    def __init__(self, secret_key: str) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"paymentpulse", info=b"stripe-secrets-at-rest").derive(
            secret_key.encode("utf-8")
        )
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def encrypt(self, plaintext: str | None) -> str | None:
        """Token for `plaintext`, or None for None/empty."""
        if not plaintext:
            return None
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str | None) -> str | None:
        """Plaintext of `token`, or None when empty. Raises ValueError for a foreign token."""
        if not token:
            return None
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise ValueError("stored secret cannot be decrypted with this PULSE_SECRET_KEY") from None


def mask_secret(value: str | None) -> str:
    """`sk_live_…a1b2`: the kind prefix and the last four characters, never more."""
    if not value:
        return ""
    kind = ""
    for candidate in ("sk_live_", "sk_test_", "rk_live_", "rk_test_", "whsec_", "pp_live_", "pp_test_"):
        if value.startswith(candidate):
            kind = candidate
            break
    tail = value[-4:] if len(value) - len(kind) >= 12 else ""
    return f"{kind}…{tail}"


# The bcrypt cost (log2 of its iterations); `configure_bcrypt` sets it from PULSE_BCRYPT_ROUNDS.
BCRYPT_ROUNDS = 12
_dummy_hashes: dict[int, str] = {}


def configure_bcrypt(rounds: int) -> None:
    """Use `rounds` (4..16) for new hashes and for the unknown-email dummy check."""
    global BCRYPT_ROUNDS
    if not 4 <= rounds <= 16:
        raise ValueError("bcrypt rounds must be between 4 and 16")
    BCRYPT_ROUNDS = rounds
    dummy_password_hash()  # made now, at start-up, so no request pays for it on the event loop


def hash_password(password: str) -> str:
    """bcrypt hash at BCRYPT_ROUNDS; slow on purpose, so call it off the event loop."""
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode("ascii")


def check_password(password: str, hashed: str) -> bool:
    """True when `password` matches; slow on purpose, so call it off the event loop."""
    try:
        return bcrypt.checkpw(password.encode("utf-8"), hashed.encode("ascii"))
    except ValueError:
        return False


def dummy_password_hash() -> str:
    """A valid hash at the current cost, checked when the email is unknown so timing reveals no accounts."""
    hashed = _dummy_hashes.get(BCRYPT_ROUNDS)
    if hashed is None:
        hashed = _dummy_hashes[BCRYPT_ROUNDS] = hash_password(random_base62(24))
    return hashed


class PoolBusy(Exception):
    """The bcrypt pool is full: answer "try again shortly" instead of queueing without bound."""


class BcryptPool:
    """bcrypt off the event loop on a few threads of its own, with a bounded queue (SPEC 5, M2).

    `workers` threads (one per core, at most 4) run checks; at most `capacity` checks run or wait.
    Checks for unknown emails (`reserved=False`) may only fill half of it, so a flood of guessed
    emails is refused fast (PoolBusy) while real accounts still get a place and finish in
    seconds. Other work (Stripe calls, the default executor) never waits behind bcrypt.
    Call `run` from the event loop only: the count is not shared between threads.
    """

    # One set of threads per process and size, shared by every app built in it (tests build many);
    # keyed by pid as well, so a forked worker starts threads of its own.
    _executors: dict[tuple[int, int], ThreadPoolExecutor] = {}

    def __init__(self, workers: int | None = None, capacity: int | None = None) -> None:
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self.capacity = capacity or self.workers * 4
        self.pending = 0

    async def run(self, fn: Callable[..., T], *args: Any, reserved: bool = False) -> T:
        """`fn(*args)` on a pool thread; raises PoolBusy at once when the pool is full for this kind."""
        limit = self.capacity if reserved else max(1, self.capacity // 2)
        if self.pending >= limit:
            raise PoolBusy()
        key = (os.getpid(), self.workers)
        executor = self._executors.get(key)
        if executor is None:
            executor = self._executors[key] = ThreadPoolExecutor(self.workers, thread_name_prefix="bcrypt")
        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        finally:
            self.pending -= 1

    async def check(self, password: str, hashed: str, reserved: bool = False) -> bool:
        """check_password off the loop; raises PoolBusy."""
        return await self.run(check_password, password, hashed, reserved=reserved)

    async def hash(self, password: str) -> str:
        """hash_password off the loop, with a reserved place (signed-in users only)."""
        return await self.run(hash_password, password, reserved=True)


def generate_password() -> str:
    """A readable random password for a generated admin account."""
    return random_base62(20)
