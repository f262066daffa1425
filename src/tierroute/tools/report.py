"""`tierroute report`: what routing did over a window of the routing log (router.routing_log).

Share of answers by tier, savings against the large tier alone (the cost ledger: each row's
cost and what its delivered tokens would have cost at the large tier's prices), escalation
rate, time to first token by tier, cost and savings by client, shadow mode's agreement with the
large tier by complexity-score band (with 95% Wilson intervals), drift, and the large tier's
share against its target (router.target_large_share). `--plot` writes share and savings over
time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tierroute.core.config import Config, ConfigError, load_config
from tierroute.quality.artifact import ArtifactError
from tierroute.router.route.log_reader import read_ledger
from tierroute.router.route.routing_log import LogError
from tierroute.router.route.shadow import band
from tierroute.router.scoring.learned import calibration_scores
from tierroute.router.selection.drift import DRIFT_BINS, DRIFT_MIN_REQUESTS, decile_edges, psi

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> float:
    """Seconds in "90s", "30m", "1h", "7d"."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"--since {text!r}: write a duration such as 90s, 30m, 1h or 7d")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


@dataclass(frozen=True)
class Reference:
    """What the window is judged against: the router's config and its artifact."""

    large: str = "large"
    target: float | None = None
    prior: np.ndarray | None = None  # the artifact's calibration scores (0-10)
    psi_max: float = 0.25
    share_band: float = 0.15
    escalation_max: float = 0.3


def drift(rows: list[dict[str, Any]], ref: Reference) -> dict[str, Any]:
    """The drift signals of the router's DriftWatch (selection/operating.py), over the window
    as a whole rather than decayed: the same PSI, bands and expected share."""
    out: dict[str, Any] = {}
    scores = np.array([r["score"] for r in rows if r["score"] is not None], dtype=float)
    if ref.prior is not None and len(ref.prior) and len(scores) >= DRIFT_MIN_REQUESTS:
        edges = decile_edges(ref.prior)
        observed = np.bincount(np.searchsorted(edges, scores, side="right"), minlength=DRIFT_BINS)
        value = psi(np.full(DRIFT_BINS, 1.0 / DRIFT_BINS), observed)
        out["score"] = {"psi": value, "band_max": ref.psi_max, "alert": value > ref.psi_max}
    decided = [r for r in rows if r["chosen_tier"]]
    expected = ref.target
    if expected is not None and len(decided) >= DRIFT_MIN_REQUESTS:
        share = sum(r["chosen_tier"] == ref.large for r in decided) / len(decided)
        out["large_share"] = {"share": share, "expected": expected, "band": ref.share_band,
                              "alert": abs(share - expected) > ref.share_band}  # fmt: skip
    answered = [r for r in rows if r["status"] == "OK" and r["final_tier"]]
    if len(answered) >= DRIFT_MIN_REQUESTS:
        rate = sum(r["escalated"] for r in answered) / len(answered)
        out["escalation_rate"] = {"rate": rate, "band_max": ref.escalation_max,
                                  "alert": rate > ref.escalation_max}  # fmt: skip
    return out


def wilson(agreed: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion `agreed` / `n` (n > 0)."""
    p = agreed / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(centre - half, 0.0)), float(min(centre + half, 1.0))


def shadow(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Shadow mode's comparisons in the window: agreement with the large tier overall, by
    complexity-score band and by the tier that answered; regret = 1 - agreement (the share of
    answers the large tier would have given otherwise)."""
    compared = [r for r in rows if r["shadow_agreed"] is not None]

    def figures(group: list[dict[str, Any]]) -> dict[str, Any]:
        agreed = sum(int(r["shadow_agreed"]) for r in group)
        low, high = wilson(agreed, len(group))
        return {
            "compared": len(group),
            "agreement": agreed / len(group),
            "agreement_ci95": [low, high],
            "regret": 1 - agreed / len(group),
        }

    if not compared:
        return {"compared": 0}
    bands: dict[str, list[dict[str, Any]]] = {}
    tiers: dict[str, list[dict[str, Any]]] = {}
    for r in compared:
        bands.setdefault(band(r["score"]), []).append(r)
        tiers.setdefault(r["final_tier"], []).append(r)
    return {
        **figures(compared),
        "by_band": {name: figures(g) for name, g in sorted(bands.items())},
        "by_tier": {name: figures(g) for name, g in sorted(tiers.items())},
    }


def build(rows: list[dict[str, Any]], since_s: float, ref: Reference) -> dict[str, Any]:
    """The report's figures over `rows` (the window's routing-log rows)."""
    target, large = ref.target, ref.large
    ok = [r for r in rows if r["status"] == "OK" and r["final_tier"]]
    by_tier: dict[str, dict[str, Any]] = {}
    for r in ok:
        t = by_tier.setdefault(r["final_tier"], {"answers": 0, "ttft_ms": [], "cost_usd": 0.0})
        t["answers"] += 1
        t["cost_usd"] += r["cost_usd"]
        if r["time_to_first_token_ms"] is not None:
            t["ttft_ms"].append(r["time_to_first_token_ms"])
    tiers = {
        name: {
            "answers": t["answers"],
            "share": t["answers"] / len(ok),
            "ttft_p50_ms": _percentile(t["ttft_ms"], 50),
            "ttft_p99_ms": _percentile(t["ttft_ms"], 99),
            "cost_usd": t["cost_usd"],
        }
        for name, t in sorted(by_tier.items())
    }
    ledger = [r for r in rows if r["large_tier_cost_usd"] is not None]
    cost = sum(r["cost_usd"] for r in rows)
    if_large = sum(r["large_tier_cost_usd"] for r in ledger)
    ledger_cost = sum(r["cost_usd"] for r in ledger)
    clients: dict[str, dict[str, float]] = {}
    for r in rows:
        fresh = {"requests": 0, "cost_usd": 0.0, "large_tier_cost_usd": 0.0}
        c = clients.setdefault(r["client"] or "(unknown)", fresh)
        c["requests"] += 1
        c["cost_usd"] += r["cost_usd"]
        c["large_tier_cost_usd"] += r["large_tier_cost_usd"] or 0.0
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {
        "window_seconds": since_s,
        "requests": len(rows),
        "answered": len(ok),
        "statuses": dict(sorted(statuses.items())),
        "share_by_tier": tiers,
        "escalation_rate": sum(r["escalated"] for r in ok) / len(ok) if ok else None,
        "cost_usd": cost,
        "large_tier_cost_usd": if_large,
        # Over the rows the ledger covers (rows of an upgraded log's older version have none).
        "savings_usd": if_large - ledger_cost,
        "savings_share": (if_large - ledger_cost) / if_large if if_large else None,
        "ledger_rows": len(ledger),
        "by_client": {
            name: {**c, "savings_usd": c["large_tier_cost_usd"] - c["cost_usd"]}
            for name, c in sorted(clients.items())
        },
        "operating_point": {
            "large_tier": large,
            "large_share": tiers.get(large, {}).get("share", 0.0) if ok else None,
            "target_large_share": target,
        },
        "shadow": shadow(rows),
        "drift": drift(rows, ref),
    }


def plot(rows: list[dict[str, Any]], path: Path, buckets: int = 24) -> None:
    """Share of answers by tier and savings, over the window, in `buckets` time bins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "OK" and r["final_tier"]]
    start, end = min(r["at"] for r in rows), max(r["at"] for r in rows)
    edges = np.linspace(start, end + 1e-6, buckets + 1)
    mids = [
        time.strftime("%H:%M", time.localtime((a + b) / 2)) for a, b in itertools.pairwise(edges)
    ]
    tiers = sorted({r["final_tier"] for r in ok})
    share = {t: np.zeros(buckets) for t in tiers}
    savings = np.zeros(buckets)
    totals = np.zeros(buckets)
    for r in ok:
        b = min(int(np.searchsorted(edges, r["at"], side="right")) - 1, buckets - 1)
        share[r["final_tier"]][b] += 1
        totals[b] += 1
        if r["large_tier_cost_usd"] is not None:
            savings[b] += r["large_tier_cost_usd"] - r["cost_usd"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    bottom_stack = np.zeros(buckets)
    for t in tiers:
        frac = np.divide(share[t], totals, out=np.zeros(buckets), where=totals > 0)
        top.bar(range(buckets), frac, bottom=bottom_stack, label=t)
        bottom_stack += frac
    top.set_ylabel("share of answers")
    top.legend(loc="upper right")
    bottom.bar(range(buckets), savings, color="tab:green")
    bottom.set_ylabel("savings (USD)")
    bottom.set_xticks(range(0, buckets, max(1, buckets // 8)))
    bottom.set_xticklabels(mids[:: max(1, buckets // 8)])
    fig.suptitle("tierroute: share by tier and savings against the large tier alone")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reference(cfg: Config) -> Reference:
    r = cfg.router
    prior = None
    if r.scorer == "learned" and r.artifact is not None:
        prior = calibration_scores(r.artifact, r.complexity_threshold)
    return Reference(
        large=cfg.tiers[-1].name if cfg.tiers else "large",
        target=r.target_large_share,
        prior=prior,
        psi_max=r.drift_psi_max,
        share_band=r.drift_share_band,
        escalation_max=r.drift_escalation_max,
    )


def cmd_report(args: argparse.Namespace) -> int:
    try:
        since_s = parse_since(args.since)
    except ValueError as error:
        print(f"tierroute report: {error}", file=sys.stderr)
        return 2
    log, ref = args.log, Reference()
    if args.config is not None or log is None:
        try:
            cfg = load_config(args.config)
            ref = reference(cfg)
        except (ConfigError, ArtifactError) as error:
            print(f"tierroute report: {error}", file=sys.stderr)
            return 2
        log = log or cfg.router.routing_log
    if log is None:
        print("tierroute report: no routing log: pass --log, or a --config whose "
              "router.routing_log is set", file=sys.stderr)  # fmt: skip
        return 2
    now = time.time()
    try:
        rows, total = read_ledger(Path(log), now - since_s)
    except (LogError, sqlite3.Error) as error:
        print(f"tierroute report: {error}", file=sys.stderr)
        return 1
    if not rows:
        print(f"tierroute report: {log}: no requests in the last {args.since} (the log holds "
              f"{total} in all)", file=sys.stderr)  # fmt: skip
        return 1
    doc = build(rows, since_s, ref)
    doc["log"] = str(log)
    if args.plot is not None:
        plot(rows, args.plot)
    if args.json:
        print(json.dumps(doc))
        return 0
    print_report(doc, args.since)
    if args.plot is not None:
        print(f"wrote {args.plot}")
    return 0


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def print_report(doc: dict[str, Any], since: str) -> None:
    print(f"{doc['log']}: the last {since}: {doc['requests']} requests, {doc['answered']} answered "
          f"({', '.join(f'{k} {v}' for k, v in doc['statuses'].items())})")  # fmt: skip
    print(f"  {'tier':<12}{'share':>8}{'answers':>9}{'TTFT p50':>10}{'p99 ms':>8}{'cost $':>11}")
    for name, t in doc["share_by_tier"].items():
        print(f"  {name:<12}{t['share']:>8.1%}{t['answers']:>9}{_ms(t['ttft_p50_ms']):>10}"
              f"{_ms(t['ttft_p99_ms']):>8}{t['cost_usd']:>11.5f}")  # fmt: skip
    rate = doc["escalation_rate"]
    print(f"  escalation rate: {'-' if rate is None else f'{rate:.1%}'}")
    share = doc["savings_share"]
    print(f"  cost ${doc['cost_usd']:.5f}; on the large tier alone "
          f"${doc['large_tier_cost_usd']:.5f}; saved ${doc['savings_usd']:.5f}"
          + ("" if share is None else f" ({share:.1%})"))  # fmt: skip
    op = doc["operating_point"]
    target = op["target_large_share"]
    print(
        f"  large tier ({op['large_tier']}) share {op['large_share']:.1%}"
        + (f", target {target:.1%} (router.target_large_share)" if target else ", no target set")
    )
    sh = doc["shadow"]
    if not sh["compared"]:
        print("  shadow: no comparisons in the window (shadow.fraction sets how many)")
    else:
        low, high = sh["agreement_ci95"]
        print(f"  shadow: {sh['compared']} answers compared with the large tier: agreement "
              f"{sh['agreement']:.1%} ({low:.0%}-{high:.0%}), "
              f"estimated regret {sh['regret']:.1%}")  # fmt: skip
        for name, b in sh["by_band"].items():
            low, high = b["agreement_ci95"]
            print(f"    score {name:<9}{b['compared']:>6} compared, agreement "
                  f"{b['agreement']:>6.1%} ({low:.0%}-{high:.0%}), "
                  f"regret {b['regret']:.1%}")  # fmt: skip
    signals = doc["drift"]
    if not signals:
        print(f"  drift: not judged (fewer than {DRIFT_MIN_REQUESTS} requests, or nothing to "
              "judge against: pass --config)")  # fmt: skip
    for name, s in signals.items():
        figures = ", ".join(f"{k} {v:.3f}" for k, v in s.items() if isinstance(v, float))
        print(f"  drift {name}: {'ALERT' if s['alert'] else 'ok'} ({figures})")
    print(f"  {'client':<24}{'requests':>9}{'cost $':>11}{'saved $':>11}")
    for name, c in doc["by_client"].items():
        print(f"  {name:<24}{c['requests']:>9}{c['cost_usd']:>11.5f}{c['savings_usd']:>11.5f}")
