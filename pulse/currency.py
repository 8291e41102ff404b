"""Amounts in a currency's minor units, as people read them: JPY has none, USD two, KWD three.

Source: Stripe's list of zero-decimal and three-decimal currencies (docs.stripe.com/currencies). Stripe
amounts are integers in the smallest unit; every currency not listed here has two decimals.
"""

from decimal import Decimal

ZERO_DECIMAL = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"}
)
THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})


def decimals(currency: str | None) -> int:
    """How many digits after the point the currency's minor unit has (0, 2 or 3)."""
    currency = (currency or "").lower()
    return 0 if currency in ZERO_DECIMAL else 3 if currency in THREE_DECIMAL else 2


def major(amount: int, currency: str | None) -> Decimal:
    """`amount` minor units as a Decimal of major units (1999 usd -> 19.99, 1999 jpy -> 1999)."""
    return Decimal(amount).scaleb(-decimals(currency))


def format_amount(amount: int, currency: str | None) -> str:
    """'1,234.56 USD', '1,999 JPY', '1.500 KWD': grouped digits, the currency's decimals, its code."""
    places = decimals(currency)
    return f"{major(amount, currency):,.{places}f} {(currency or '').upper()}"


def compact(value: Decimal | int | float | str) -> str:
    """A major-unit number short enough for a chart axis: 950, 1.5k, 12k, 2.5M."""
    value = Decimal(value)
    for size, suffix in ((Decimal(10) ** 9, "B"), (Decimal(10) ** 6, "M"), (Decimal(10) ** 3, "k")):
        if abs(value) >= size:
            return f"{(value / size).normalize():f}".rstrip("0").rstrip(".")[:4].rstrip(".") + suffix
    return f"{value.normalize():f}" if value == value.to_integral() else f"{value:.2f}"
