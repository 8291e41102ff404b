"""The project dashboard: setup health, counts by status, a 12-week chart, webhook health."""

from console.base import PID, ProjectHandler
from pulse import insights, setup_health
from pulse.db import block

__all__ = ["PID", "DashboardHandler", "chart"]


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
        bars.append({"x": round(pad + i * slot + slot * 0.15, 1), "w": round(slot * 0.7, 1),
                     "y": round(base - h, 1), "h": h, "count": count, "week": start.isoformat(),
                     "label": [start.strftime("%d"), start.strftime("%b")] if two_line_labels
                     else [start.strftime("%d %b")],
                     "cx": round(pad + i * slot + slot / 2, 1)})
    return {"width": width, "height": height, "bars": bars, "top": top, "base": base, "font": font,
            "label_y": round(base + font + 4, 1), "line": round(font * 1.15, 1)}


class DashboardHandler(ProjectHandler):
    section = "dashboard"

    def get(self, project_id):
        with block():
            problems = setup_health.problems(
                self.project, default_secret_key=bool(self.config.stripe_secret_key),
                default_webhook_secret=bool(self.config.stripe_webhook_secret))
            counts = insights.status_counts(self.project)
            series = insights.weekly_starts(self.project)
            last = insights.last_webhook(self.project)
            failures = insights.recent_failures(self.project)
            doubled, doubled_total = insights.several_with_access(self.project)
        self.render_page("dashboard.html", counts=counts, total=sum(counts.values()), problems=problems,
                         charts=[("wide", chart(series)),
                                 ("narrow", chart(series, width=360, height=200, font=12, two_line_labels=True))],
                         started=sum(c for _, c in series), last_webhook=last, failures=failures,
                         webhook_url=self.webhook_url(), doubled=doubled, doubled_total=doubled_total)


default_handlers = [
    (PID + r"/", DashboardHandler),
]
