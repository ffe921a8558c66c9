"""The report of ``feedforge bench serve``: its targets and its Markdown table."""

from __future__ import annotations

from typing import Any


def targets(feeds: dict[str, Any], floor: dict[str, Any], ingest: dict[str, Any]) -> list[dict]:
    """The benchmark's targets, each with what was measured and whether it was met.

    Args:
        feeds: The open-loop run at the target rate.
        floor: The compute floor.
        ingest: The ingestion run.
    """
    p99, p50 = feeds["p99_ms"], feeds["p50_ms"]
    return [
        {
            "target": "p99 <= 25 ms at the offered rate",
            "measured": p99,
            "met": p99 is not None and p99 <= 25.0,
        },
        {"target": "0 errors", "measured": feeds["errors"], "met": feeds["errors"] == 0},
        {
            "target": "p50 <= 2 x compute floor",
            "measured": None if p50 is None else p50 / floor["floor_p50_ms"],
            "met": p50 is not None and p50 <= 2 * floor["floor_p50_ms"],
        },
        {
            "target": "ingestion >= 20,000 events/s (acknowledged = durable)",
            "measured": ingest["events_per_s"],
            "met": ingest["events_per_s"] >= 20_000,
        },
    ]


def _outside_stages(profile: dict[str, dict[str, float]]) -> str:
    """The profile's sentence on a whole request against the sum of its stages."""
    request = profile.get("request")
    if not request:
        return ""
    stages = sum(v["mean_ms"] for k, v in profile.items() if k != "request")
    return (
        f" A whole `/recommend` request in the app (`feedforge_request_seconds`) took "
        f"{request['mean_ms']:.2f} ms on average ({int(request['count'])}), "
        f"{request['mean_ms'] - stages:.2f} ms more than its stages: routing and parameter "
        "validation, the explanations, the feed-log line and the JSON answer (HTTP parsing "
        "before the app and the loopback are in neither)."
    )


def render_markdown(report: dict[str, Any]) -> str:
    """The report (:func:`feedforge.bench.serve.run_serve`'s) as Markdown."""
    spec, feeds, floor, ingest = (
        report["spec"],
        report["feeds"],
        report["compute_floor"],
        report["ingestion"],
    )

    def cell(value: Any) -> str:
        return "" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))

    cold = floor.get("cold_items") or {}
    cold_text = (
        f"{cold['content_items']} of them with content-mapped vectors, serving.cold_items"
        if cold.get("method") == "content"
        else "the retrieval model's items only"
    )

    lines = [
        "# Serving under load",
        "",
        f"Command: `{report['command']}`",
        "",
        f"{spec['items']} catalog items and {spec['users']} users simulated; the published "
        f"version serves {floor['served_items']} items ({cold_text}) and "
        f"{floor['served_users']} users (the users of the train split); the ANN index covers "
        f"the served items; {spec['candidates']} candidates ranked per request (ranker "
        f"`{floor['ranker']}`); `feedforge serve --workers {spec['workers']}` against Redis; "
        f"open-loop Poisson arrivals for {spec['duration_s']} s per rate from a separate "
        f"process. Machine: {report['machine']['cpus']} CPUs (service, Redis and load generator "
        f"share them). Setup (s): {report['setup_seconds']}.",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    lines += [
        f"| {t['target']} | {cell(t['measured'])} | {'yes' if t['met'] else '**no**'} |"
        for t in report["targets"]
    ]
    lines += [
        "",
        "| offered rps | requests | throughput rps | p50 ms | p95 ms | p99 ms | max ms | errors "
        "| degraded | service CPU ms / request |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {run['offered_rate']} | {run['requests']} | {cell(run['throughput_rps'])} | "
            f"{cell(run['p50_ms'])} | {cell(run['p95_ms'])} | {cell(run['p99_ms'])} | "
            f"{cell(run['max_ms'])} | {run['errors']} | {run['degraded']} | "
            f"{cell(run.get('service_cpu_ms_per_request'))} |"
            for run in [feeds, *report.get("sweep", [])]
        ),
        "",
        "The first row is the target rate (the targets above); the service CPU time per request "
        "is every worker's user + system time over the run, divided by the requests sent.",
        "",
        f"Statuses at the target rate: {feeds['statuses']}.",
        "",
        "Compute floor (no HTTP, no Redis), median ms per request: "
        + ", ".join(f"{k} {v:.2f}" for k, v in floor["median_ms"].items())
        + f"; total {floor['floor_p50_ms']:.2f}.",
        "",
        *(
            [
                f"The retrieval beam (`serving.ann_ef_search`, {spec['candidates']} candidates, "
                f"the floor's {floor['users']} users; recall@{spec['candidates']} against exact "
                "search):",
                "",
                "| ef_search | median ms | recall |",
                "|---|---|---|",
                *(
                    f"| {b['ef_search']} | {b['median_ms']:.2f} | {b['recall']:.3f} |"
                    for b in floor.get("beam", [])
                ),
                "",
            ]
            if floor.get("beam")
            else []
        ),
        "Where the time goes (every worker's `feedforge_stage_seconds`, mean ms, with counts): "
        + ", ".join(
            f"{stage} {v['mean_ms']:.2f} ({int(v['count'])})"
            for stage, v in report["profile_one_worker"].items()
            if stage != "request"
        )
        + "."
        + _outside_stages(report["profile_one_worker"]),
        "",
        f"Ingestion: {ingest['acknowledged']} events acknowledged in {ingest['seconds']:.1f} s "
        f"= {ingest['events_per_s']:.0f} events/s (batches of {ingest['batch']}, "
        f"{ingest['clients']} clients, {ingest['failed']} failed).",
    ]
    return "\n".join(lines) + "\n"
