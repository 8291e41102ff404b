"""The results table and the SPEC 6 target verdicts."""


def _verdict(ok):
    return "met" if ok else "MISSED"


def targets(results):
    """{target: {"value", "target", "verdict"}} for every figure that has a target."""
    out = {}
    scen = results["scenarios"]
    hot = scen.get("1_hot_path", {})
    for name in ("sqlite", "mysql"):
        if name in hot:
            ratio = hot[name]["ratio"]
            out[f"1 hot path ratio ({name})"] = {"value": ratio, "target": ">= 0.5", "verdict": _verdict(ratio >= 0.5)}
    for key, value in scen.items():
        if key.startswith("2_") and "wall_s" in value:
            backend = key.rsplit("_", 1)[1]
            out[f"2 100 checkouts wall ({backend})"] = {"value": value["wall_s"], "target": "< 1.5 s",
                                                      "verdict": _verdict(value["wall_s"] < 1.5 and value["ok"] == value["checkouts"])}
            out[f"2 hot p99 during/idle ({backend})"] = {"value": value["p99_ratio"], "target": "< 3x",
                                                       "verdict": _verdict(value["p99_ratio"] < 3)}
        if key.startswith("3_") and "rss_growth_mb" in value:
            backend = key.rsplit("_", 1)[1]
            out[f"3 export RSS growth ({backend})"] = {"value": value["rss_growth_mb"], "target": "< 50 MB",
                                                     "verdict": _verdict(value["rss_growth_mb"] < 50
                                                                         and value["rows"] == value["rows_expected"])}
    return out


def table(results):
    """A plain-text table of every figure, then the target verdicts."""
    scen = results["scenarios"]
    lines = [f"PaymentPulse benchmark, {results['started_at']}; machine: {results['machine']['cores']} cores, "
             f"{results['machine']['cpu']}, Python {results['machine']['python']}, {results['machine']['load_generator']}"]
    hot = scen.get("1_hot_path")
    if hot:
        lines += ["", f"1. GET /api/subscription vs bare Tornado ({hot['settings']})",
                  f"   {'target':<8}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'ratio':>8}"]
        for name in ("bare", "sqlite", "mysql"):
            if name in hot:
                row = hot[name]
                lines.append(f"   {name:<8}{row['rps']:>10.0f}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}"
                             f"{row.get('ratio', 1.0):>8.2f}")
    for key, value in scen.items():
        if key.startswith("2_"):
            lines += ["", f"2. 100 concurrent checkouts, Stripe answering in 300 ms ({key.rsplit('_', 1)[1]})"]
            if "skipped" in value:
                lines.append("   skipped: " + value["skipped"])
                continue
            lines.append(f"   wall {value['wall_s']:.2f} s ({value['ok']}/{value['checkouts']} ok); hot p99 idle "
                         f"{value['idle_p99_ms']:.2f} ms, during {value['during_p99_ms']:.2f} ms "
                         f"({value['p99_ratio']:.1f}x); batches under probe: median {value['wall_s_under_probe_median']} s")
        if key.startswith("3_"):
            lines += ["", f"3. CSV export of customers ({key.rsplit('_', 1)[1]})"]
            if "skipped" in value:
                lines.append("   skipped: " + value["skipped"])
                continue
            lines.append(f"   {value['rows']} rows in {value['seconds']} s = {value['rows_per_s']} rows/s; RSS "
                         f"{value['rss_before_mb']} -> peak {value['rss_peak_mb']} MB (+{value['rss_growth_mb']} MB); "
                         f"hot p99 idle {value['idle_p99_ms']:.2f} ms, during {value['during_p99_ms']:.2f} ms "
                         f"({value['during_requests']} answered, {value['during_non_2xx']} failed)")
        if key.startswith("4_"):
            lines += ["", f"4. Signed webhooks, 10% duplicates ({key.rsplit('_', 1)[1]})"]
            if "skipped" in value:
                lines.append("   skipped: " + value["skipped"])
                continue
            lines.append(f"   {value['events']} events in {value['seconds']} s = {value['events_per_s']} events/s "
                         f"(concurrency {value['concurrency']}); statuses {value['statuses']}, "
                         f"duplicates answered {value['duplicates_answered']}")
    verdicts = results.get("targets") or {}
    if verdicts:
        lines += ["", f"   {'target':<36}{'value':>8}  {'goal':<8} verdict"]
        for name, row in verdicts.items():
            lines.append(f"   {name:<36}{row['value']:>8}  {row['target']:<8} {row['verdict']}")
    return "\n".join(lines)
