"""Email addresses: the one validation rule, the identity key of console accounts, look-alike detection."""

import re
import unicodedata

# One pattern for every email we accept (checkout, CLI, console); handlers/openapi.py publishes it.
# Local part and domain: no whitespace, no control characters, one "@", a dot in the domain.
_PART = r"[^@\s\x00-\x1f\x7f-\x9f]"
EMAIL_PATTERN = rf"^{_PART}+@{_PART}+\.[^@\s.\x00-\x1f\x7f-\x9f]+$"
MAX_LENGTH = 254
_EMAIL = re.compile(EMAIL_PATTERN)

# Letters of other scripts drawn like Latin ones (a subset of Unicode's confusables.txt covering
# Cyrillic and Greek lower case, the usual spoofing alphabet), plus the dotless i.
_CONFUSABLES = str.maketrans(
    {
        "а": "a",
        "в": "b",
        "с": "c",
        "ԁ": "d",
        "е": "e",
        "һ": "h",
        "і": "i",
        "ј": "j",
        "к": "k",
        "ӏ": "l",
        "м": "m",
        "н": "h",
        "о": "o",
        "р": "p",
        "ԛ": "q",
        "ѕ": "s",
        "т": "t",
        "ս": "u",
        "ѵ": "v",
        "ԝ": "w",
        "х": "x",
        "у": "y",
        "ᴢ": "z",
        "ɑ": "a",
        "α": "a",
        "β": "b",
        "ε": "e",
        "ι": "i",
        "κ": "k",
        "ν": "v",
        "ο": "o",
        "ρ": "p",
        "τ": "t",
        "υ": "u",
        "χ": "x",
        "γ": "y",
        "ı": "i",
        "ȷ": "j",
        "ɡ": "g",
    }
)


def is_valid(email: object) -> bool:
    """True for a plausible address of at most 254 characters (the pattern above; no DNS lookup)."""
    return isinstance(email, str) and len(email) <= MAX_LENGTH and _EMAIL.fullmatch(email) is not None


def key(email: str) -> str:
    """The identity of an address (SPEC 5): NFKC, trimmed, case-folded.

    Full-width, compatibility and case variants of one address give the same key, so they name
    one account. NFKC runs again after case folding, which can leave text un-normalised.
    """
    text = unicodedata.normalize("NFKC", email or "").strip()
    return unicodedata.normalize("NFKC", text.casefold())


def skeleton(email: str) -> str:
    """A coarser form of `key`: accents dropped and Cyrillic/Greek look-alikes mapped to Latin.

    Two different keys with one skeleton (`victim@` and `vïctim@`, or a Cyrillic `с`) are
    addresses a person would read as the same: a new account must not be created for the second.
    """
    decomposed = unicodedata.normalize("NFKD", key(email))
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return stripped.translate(_CONFUSABLES)
