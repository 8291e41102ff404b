"""The results table and the issue 14 target verdicts (every target a ratio or a rate from the same run)."""

BACKENDS = ("sqlite", "mysql")
# (workload, minimum ratio to bare Tornado); the single-user mix is shown without a target.
HOT_TARGETS = (("zipf", 0.6), ("random", 0.5))
P99_GOAL = 3.0


def _verdict(ok):
    return "met" if ok else "MISSED"


def _row(value, goal, ok):
    return {"value": value, "target": goal, "verdict": _verdict(ok)}


def targets(results):
    """{target: {"value", "target", "verdict"}} for every figure that has a target."""
    out = {}
    scen = results["scenarios"]
    hot = scen.get("1_hot_path", {})
    for name in BACKENDS:
        for kind, goal in HOT_TARGETS:
            row = hot.get(name, {}).get(kind)
            if row:
                out[f"hot path {kind} users ({name})"] = _row(
                    row["ratio"], f">= {goal}x", row["ratio"] >= goal and not row["failed"]
                )
    for name in BACKENDS:
        co = scen.get(f"2_checkouts_{name}")
        if co:
            out[f"100 checkouts wall ({name})"] = _row(
                co["wall_s"], "< 1.5 s", co["wall_s"] < 1.5 and co["ok"] == co["checkouts"]
            )
            out[f"hot p99 during checkouts ({name})"] = _row(
                co["p99_ratio"], f"< {P99_GOAL:g}x idle", co["p99_ratio"] < P99_GOAL and not co["during_failed"]
            )
        wh = scen.get(f"4_webhooks_{name}")
        if wh:
            out[f"hot p99 during webhook burst ({name})"] = _row(
                wh["p99_ratio"], f"< {P99_GOAL:g}x idle", wh["p99_ratio"] < P99_GOAL and not wh["during_failed"]
            )
        ex = scen.get(f"3_export_{name}")
        if ex:
            out[f"hot p99 during export ({name})"] = _row(
                ex["p99_ratio"], f"< {P99_GOAL:g}x idle", ex["p99_ratio"] < P99_GOAL and not ex["during_failed"]
            )
            out[f"export RSS growth ({name})"] = _row(
                ex["rss_growth_mb"], "< 50 MB", ex["rss_growth_mb"] < 50 and ex["rows"] == ex["rows_expected"]
            )
    wh = scen.get("4_webhooks_mysql")
    if wh:
        rate = min(wh["events_per_s"], wh["applied_per_s"])
        out["webhooks/s, all applied (mysql)"] = _row(
            rate, ">= 300/s", rate >= 300 and wh["all_applied"] and set(wh["statuses"]) == {"200"}
        )
    return out


def table(results):
    """A plain-text table of every figure, then the target verdicts."""
    scen = results["scenarios"]
    machine = results["machine"]
    lines = [
        f"PaymentPulse benchmark, {results['started_at']}; machine: {machine['cores']} cores, {machine['cpu']}, "
        f"Python {machine['python']}, {machine['load_generator']}"
    ]
    if results.get("service_env"):
        lines.append(f"service environment: {results['service_env']}")
    hot = scen.get("1_hot_path")
    if hot:
        lines += [
            "",
            f"1. GET /api/subscription vs bare Tornado, {results['args']['users']} users ({hot['settings']})",
            f"   {'target':<16}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'ratio':>7}{'hit rate':>10}  per round",
        ]
        bare = hot["bare"]
        lines.append(f"   {'bare':<16}{bare['rps']:>9.0f}{bare['p50_ms']:>9.2f}{bare['p99_ms']:>9.2f}{1.0:>7.2f}")
        for name in BACKENDS:
            for kind, row in hot.get(name, {}).items():
                rate = "-" if row["hit_rate"] is None else f"{row['hit_rate']:.1%}"
                lines.append(
                    f"   {name + ' ' + kind:<16}{row['rps']:>9.0f}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
                    f"{row['ratio']:>7.2f}{rate:>10}  {row['ratio_per_round']}"
                )

    def probe(value):
        own = (
            f" (this scenario's own idle probe: {value['own_idle_p99_ms']:.2f} ms)"
            if "own_idle_p99_ms" in value
            else ""
        )
        return (
            f"hot p99 idle {value['idle_p99_ms']:.2f} ms, the backend's median{own}, during "
            f"{value['during_p99_ms']:.2f} ms "
            f"({value['p99_ratio']:.1f}x; max {value['during_max_ms']:.0f} ms; {value['during_answered']}/"
            f"{value['during_sent']} answered at {value['probe_rate']:g}/s)"
        )

    for key, value in scen.items():
        backend = key.rsplit("_", 1)[1]
        if key.startswith("2_"):
            lines += [
                "",
                f"2. 100 concurrent checkouts, Stripe answering in 300 ms ({backend})",
                f"   wall {value['wall_s']:.2f} s ({value['ok']}/{value['checkouts']} ok); batches under "
                f"probe: median {value['wall_s_under_probe_median']} s",
                "   " + probe(value),
            ]
        if key.startswith("3_"):
            lines += [
                "",
                f"3. CSV export of customers ({backend})",
                f"   {value['rows']} rows in {value['seconds']} s = {value['rows_per_s']} rows/s; RSS "
                f"{value['rss_before_mb']} -> peak {value['rss_peak_mb']} MB (+{value['rss_growth_mb']} MB)",
                "   " + probe(value),
            ]
        if key.startswith("4_"):
            lines += [
                "",
                f"4. Burst of signed webhooks, 10% duplicates ({backend})",
                f"   {value['events']} events acknowledged in {value['seconds']} s = {value['events_per_s']}/s "
                f"(concurrency {value['concurrency']}); all applied after {value['applied_s']} s = "
                f"{value['applied_per_s']}/s; statuses {value['statuses']}, outcomes {value['outcomes']}, "
                f"duplicates answered {value['duplicates_answered']}",
                "   " + probe(value),
            ]
    verdicts = results.get("targets") or {}
    if verdicts:
        lines += ["", f"   {'target':<40}{'value':>9}  {'goal':<12} verdict"]
        for name, row in verdicts.items():
            lines.append(f"   {name:<40}{row['value']:>9}  {row['target']:<12} {row['verdict']}")
    return "\n".join(lines)


def markdown(results):
    """The README's table of the latest run: every target with its value and verdict, both backends."""
    scen, verdicts = results["scenarios"], results.get("targets") or {}
    hot = scen.get("1_hot_path", {})
    lines = ["| target | SQLite | MySQL | goal |", "|---|---|---|---|"]

    def cell(name, fmt):
        row = verdicts.get(name)
        if row is None:
            return "—"
        text = fmt(row["value"])
        return f"{text} {'met' if row['verdict'] == 'met' else '**missed**'}"

    for kind, goal in HOT_TARGETS:

        def hot_cell(backend, kind=kind):
            row = hot.get(backend, {}).get(kind)
            verdict = verdicts.get(f"hot path {kind} users ({backend})")
            if not row or not verdict:
                return "—"
            rate = "-" if row["hit_rate"] is None else f"{row['hit_rate']:.0%}"
            return (
                f"{row['ratio']:.2f}× ({row['rps']:,.0f} req/s, hit rate {rate}, pairs {row['ratio_per_round']}) "
                f"{'met' if verdict['verdict'] == 'met' else '**missed**'}"
            )

        lines.append(
            f"| hot path, {kind} users of {results['args']['users']:,} | {hot_cell('sqlite')} | "
            f"{hot_cell('mysql')} | ≥ {goal}× bare |"
        )
    one = [hot.get(b, {}).get("one") for b in BACKENDS]
    if all(one):
        lines.append(f"| hot path, one user (no target) | {one[0]['ratio']:.2f}× | {one[1]['ratio']:.2f}× | — |")
    rows = [
        ("100 checkouts, Stripe at 300 ms: wall", "100 checkouts wall ({})", lambda v: f"{v:.2f} s", "< 1.5 s"),
        ("hot p99 during checkouts / idle", "hot p99 during checkouts ({})", lambda v: f"{v:.1f}×", "< 3×"),
        (
            "hot p99 during 2,000-webhook burst / idle",
            "hot p99 during webhook burst ({})",
            lambda v: f"{v:.1f}×",
            "< 3×",
        ),
        ("hot p99 during 100k-row export / idle", "hot p99 during export ({})", lambda v: f"{v:.1f}×", "< 3×"),
        ("export RSS growth", "export RSS growth ({})", lambda v: f"{v:.1f} MB", "< 50 MB"),
    ]
    for label, name, fmt, goal in rows:
        lines.append(f"| {label} | {cell(name.format('sqlite'), fmt)} | {cell(name.format('mysql'), fmt)} | {goal} |")
    wh = scen.get("4_webhooks_mysql")
    if wh:
        lines.append(
            f"| webhooks/s, 10 % duplicates, all applied (acknowledged / applied end to end) | "
            f"{scen.get('4_webhooks_sqlite', {}).get('events_per_s', '—')} / "
            f"{scen.get('4_webhooks_sqlite', {}).get('applied_per_s', '—')} | "
            f"{wh['events_per_s']} / {cell('webhooks/s, all applied (mysql)', lambda v: f'{v:g}')} | "
            f"≥ 300/s (MySQL) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys

    print(markdown(json.loads(open(sys.argv[1]).read())))
