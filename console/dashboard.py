"""The project dashboard: counts by status, a 12-week chart, webhook health."""

from console.base import ProjectHandler
from pulse import insights
from pulse.db import block

PID = r"/console/p/(proj_[0-9A-Za-z]+)"


class DashboardHandler(ProjectHandler):
    section = "dashboard"

    def get(self, project_id):
        with block():
            counts = insights.status_counts(self.project)
            series = insights.weekly_starts(self.project)
            last = insights.last_webhook(self.project)
            failures = insights.recent_failures(self.project)
            doubled, doubled_total = insights.several_with_access(self.project)
        self.render_page("dashboard.html", counts=counts, total=sum(counts.values()),
                         chart=insights.chart(series), started=sum(c for _, c in series),
                         last_webhook=last, failures=failures, doubled=doubled, doubled_total=doubled_total)


default_handlers = [
    (PID + r"/", DashboardHandler),
]
