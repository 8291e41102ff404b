"""The project dashboard: setup health, counts by status, a 12-week chart, webhook health."""

from decimal import Decimal

from console.base import PID, ProjectHandler
from pulse import insights, metrics, setup_health
from pulse.currency import compact, format_amount, major
from pulse.db import block, utcnow

__all__ = ["PID", "DashboardHandler", "chart", "mrr_chart"]


def chart(series, width=720, height=180, pad=24, font=10, two_line_labels=False):
    """Bar geometry for an inline SVG of `series` [(week start date, count)], in viewBox units.

    The SVG scales with its card, so a phone gets a narrow variant (width 360, larger font, the label's
    day over its month) whose text stays readable at 390 px instead of the desktop one shrunk to 4 px.
    """
    label_room = font * (2.4 if two_line_labels else 1.3)
    top = max((count for _, count in series), default=0) or 1
    slot = (width - pad) / max(len(series), 1)
    base = height - label_room - 4
    bars = []
    for i, (start, count) in enumerate(series):
        h = round((base - pad) * count / top, 1)
        bars.append(
            {
                "x": round(pad + i * slot + slot * 0.15, 1),
                "w": round(slot * 0.7, 1),
                "y": round(base - h, 1),
                "h": h,
                "count": count,
                "week": start.isoformat(),
                "label": [start.strftime("%d"), start.strftime("%b")] if two_line_labels else [start.strftime("%d %b")],
                "cx": round(pad + i * slot + slot / 2, 1),
            }
        )
    return {
        "width": width,
        "height": height,
        "bars": bars,
        "top": top,
        "base": base,
        "font": font,
        "label_y": round(base + font + 4, 1),
        "line": round(font * 1.15, 1),
    }


def nice_top(value):
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above `value` (> 0): a round top for an axis."""
    value = Decimal(value)
    if value <= 0:
        return Decimal(1)
    power = Decimal(10) ** (len(str(int(value))) - 1) if value >= 1 else Decimal("0.01")
    for step in (1, 2, Decimal("2.5"), 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power


def mrr_chart(series, code, width=720, height=220, font=10, two_line_labels=False):
    """Bar geometry for an inline SVG of one currency's `series` [(month end, minor units)], in viewBox units.

    A y axis of MRR in major units (0, half and the round top, labelled compactly, titled with the currency)
    and an x axis of months; like `chart`, a narrow variant keeps its text readable at 390 px.
    """
    top = nice_top(max((major(amount, code) for _, amount in series), default=0))
    left, right, pad = font * 4.2, 8, font * 2
    label_room = font * (2.4 if two_line_labels else 1.3)
    base = height - label_room - font * 1.6 - 4
    slot = (width - left - right) / max(len(series), 1)
    ticks = [
        {"y": round(base - (base - pad) * float(share), 1), "label": compact(top * share)}
        for share in (0, Decimal("0.5"), 1)
    ]
    bars = []
    for i, (end, amount) in enumerate(series):
        h = round((base - pad) * float(major(amount, code) / top), 1)
        cx = round(left + i * slot + slot / 2, 1)
        bars.append(
            {
                "x": round(left + i * slot + slot * 0.15, 1),
                "w": round(slot * 0.7, 1),
                "cx": cx,
                "y": round(base - h, 1),
                "h": h,
                "title": f"{end:%b %Y}: {format_amount(amount, code)}",
                "label": [end.strftime("%b"), end.strftime("%y")] if two_line_labels else [end.strftime("%b %y")],
            }
        )
    return {
        "width": width,
        "height": height,
        "bars": bars,
        "ticks": ticks,
        "base": base,
        "left": left,
        "font": font,
        "label_y": round(base + font + 4, 1),
        "line": round(font * 1.15, 1),
        "x_title_y": height - 4,
        "y_title": f"MRR ({code.upper()})",
        "pad": pad,
    }


class DashboardHandler(ProjectHandler):
    section = "dashboard"

    def get(self, project_id):
        with block():
            problems = setup_health.problems(
                self.project,
                default_secret_key=bool(self.config.stripe_secret_key),
                default_webhook_secret=bool(self.config.stripe_webhook_secret),
            )
            counts = insights.status_counts(self.project)
            series = insights.weekly_starts(self.project)
            last = insights.last_webhook(self.project)
            failures = insights.recent_failures(self.project)
            doubled, doubled_total = insights.several_with_access(self.project)
            rows = metrics.load(self.project)
        self.render_page(
            "dashboard.html",
            counts=counts,
            total=sum(counts.values()),
            problems=problems,
            charts=[
                ("wide", chart(series)),
                ("narrow", chart(series, width=360, height=200, font=12, two_line_labels=True)),
            ],
            started=sum(c for _, c in series),
            last_webhook=last,
            failures=failures,
            webhook_url=self.webhook_url(),
            doubled=doubled,
            doubled_total=doubled_total,
            **revenue(rows),
        )


def revenue(rows, now=None):
    """The dashboard's money figures from metrics rows: MRR per currency, subscribers, conversion, churn, MRR chart."""
    now = now or utcnow()
    current = metrics.mrr(rows)
    series = metrics.mrr_series(rows, now)
    # The chart is of the currency with the most MRR now (or, with none now, the most in any month).
    peak = {}
    for _, totals in series:
        for code, amount in totals.items():
            peak[code] = max(peak.get(code, 0), amount)
    code = next(iter(current), None) or max(peak, key=peak.get, default=None)
    mrr_charts = []
    if code:
        points = [(end, totals.get(code, 0)) for end, totals in series]
        mrr_charts = [
            ("wide", mrr_chart(points, code)),
            ("narrow", mrr_chart(points, code, width=360, height=240, font=12, two_line_labels=True)),
        ]
    return {
        "mrr": [(c, format_amount(a, c)) for c, a in current.items()],
        "unpriced": metrics.unpriced(rows),
        "subscribers": metrics.subscribers(rows),
        "conversion": metrics.trial_conversion(rows, now),
        "churn": metrics.churn(rows, now),
        "mrr_code": code,
        "mrr_charts": mrr_charts,
        "other_currencies": sorted(set(peak) - {code}),
    }


default_handlers = [
    (PID + r"/", DashboardHandler),
]
