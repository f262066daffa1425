"""The `tierroute` commands that work without a running router's API: labelled data,
calibration and evaluation, the tier benchmark, the routing log's summary and the cost report.
cli.py adds them to its parser."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tierroute.router.tiers.bench import DEFAULT_SAMPLE


def bench_tiers(args: argparse.Namespace) -> int:
    import asyncio

    from tierroute.core.config import load_config
    from tierroute.router.tiers import bench as benchtiers
    from tierroute.router.tiers.store import StoreDown, open_store

    cfg = load_config(args.config, part="router")
    names = [t.name for t in cfg.tiers]
    unknown = [t for t in args.tier or [] if t not in names]
    if unknown:
        raise ValueError(
            f"--tier {', '.join(unknown)}: not a tier of {args.config} ({', '.join(names)})"
        )
    for flag in ("runs", "concurrency", "max_tokens"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1")
    prompts = benchtiers.read_sample(args.sample)
    location = args.store or cfg.router.metrics_store
    store = open_store(location) if location else None  # refused before anything is sent
    chosen = args.tier or names
    progress = benchtiers.Progress(len(prompts) * args.runs * len(chosen))
    try:
        rows = asyncio.run(
            benchtiers.run(
                cfg,
                prompts,
                args.runs,
                args.concurrency,
                args.max_tokens,
                args.timeout,
                args.tier,
                progress,
            )
        )
    except benchtiers.TierUnreachable as error:
        print(f"tierroute bench-tiers: {error}", file=sys.stderr)
        if store is not None:
            store.close()
        return 1
    print(benchtiers.table(rows))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    if store is None:
        print("not stored: router.metrics_store is unset (or pass --store)", file=sys.stderr)
        return 0
    try:
        store.exchange(benchtiers.observations(rows), cfg.router.metrics_half_life_seconds)
        store.record_benchmark(rows)
    except StoreDown as error:
        print(f"tierroute bench-tiers: the metrics store failed: {error}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"stored in {getattr(store, 'path', location)}", file=sys.stderr)
    return 0


def log_summary(args: argparse.Namespace) -> int:
    from tierroute.router.route.log_reader import summarize

    s = summarize(args.path)
    if args.json:
        print(json.dumps(s))
        return 0
    span = ""
    if s["rows"]:
        when = [
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
            for t in (s["first_at"], s["last_at"])
        ]
        span = f", {when[0]} to {when[1]} UTC"
    print(f"{s['path']}: {s['rows']} requests (schema {s['schema_version']}{span})")
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(s["statuses"].items()))
    print(f"  statuses: {statuses or 'none'}")
    print(
        f"  {'chosen tier':<14}{'requests':>9}{'escalated':>11}{'delivered':>11}"
        f"{'mean ms':>9}{'cost $':>10}"
    )
    for tier, t in s["by_chosen_tier"].items():
        print(
            f"  {tier:<14}{t['requests']:>9}{t['escalated']:>11}{t['verdicts']['DELIVER']:>11}"
            f"{t['mean_latency_ms']:>9.0f}{t['cost_usd']:>10.4f}"
        )
    return 0


def offline_commands(commands: Any) -> None:
    """Commands that work on labelled data, without a running suite."""

    def later(name: str) -> Callable[[argparse.Namespace], int]:
        def run(args: argparse.Namespace) -> int:
            from tierroute.tools import quality_commands  # numpy, scikit-learn: when asked

            return int(getattr(quality_commands, name)(args))

        return run

    config_help = "config whose router.model (the embedder) to use"
    data = commands.add_parser("data", help="labelled routing data")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    convert = data_commands.add_parser(
        "convert", help="convert RouteLLM's evaluation files (or data/everyday) to JSONL"
    )
    convert.add_argument("benchmark", choices=["mmlu", "gsm8k", "mt_bench", "everyday"])
    convert.add_argument(
        "input", type=Path, help="e.g. ../shared/data/routellm/mmlu, or data/everyday"
    )
    convert.add_argument("-o", "--out", type=Path, required=True)
    convert.set_defaults(run=later("cmd_convert"))

    bt = commands.add_parser(
        "bench-tiers", help="measure every tier's speed, errors and cost into the metrics store"
    )
    bt.add_argument("--config", type=Path, default=Path("configs/default.yaml"))
    bt.add_argument(
        "--sample", type=Path, default=DEFAULT_SAMPLE, help="JSONL: prompt and category per line"
    )
    bt.add_argument("--runs", type=int, default=2, help="times each prompt is sent to each tier")
    bt.add_argument("--concurrency", type=int, default=2, help="calls in flight over all tiers")
    bt.add_argument("--max-tokens", type=int, default=48, help="answer budget per call")
    bt.add_argument("--tier", action="append", help="only this tier (repeatable)")
    bt.add_argument("--store", help="metrics store (default: the config's router.metrics_store)")
    bt.add_argument("--out", type=Path, help="also write the table as JSON here")
    bt.set_defaults(run=bench_tiers)

    log = commands.add_parser("log", help="the routing log (router.routing_log)")
    log_commands = log.add_subparsers(dest="log_command", required=True)
    summary = log_commands.add_parser(
        "summary", help="what a routing log holds: requests, escalations, verdicts per tier"
    )
    summary.add_argument("path", type=Path, help="e.g. var/routing-log.sqlite")
    summary.set_defaults(run=log_summary)

    def report(args: argparse.Namespace) -> int:
        from tierroute.tools.report import cmd_report  # numpy and the log reader: when asked

        return cmd_report(args)

    rep = commands.add_parser(
        "report",
        help="what routing did over a window of the routing log: share by tier, savings, "
        "escalations, TTFT by tier, clients",
    )
    rep.add_argument("--since", default="1h", help="the window: 90s, 30m, 1h, 7d (default 1h)")
    rep.add_argument("--log", type=Path, help="the routing log (default: the config's)")
    rep.add_argument("--config", type=Path, help="config for the log, the target share, tiers")
    rep.add_argument("--plot", type=Path, help="write a PNG of share and savings over time")
    rep.set_defaults(run=report)

    cal = commands.add_parser(
        "calibrate", help="fit a router artifact on labelled data, or on a routing log"
    )
    cal.add_argument("data", type=Path, nargs="*", help="labelled JSONL file(s)")
    cal.add_argument(
        "--from-log",
        type=Path,
        help="learn from a routing log (router.routing_log) instead: the small tier's "
        "escalated answers as 'needed the large tier', its confident deliveries as 'small was "
        "enough', blended with --prior",
    )
    cal.add_argument(
        "--small",
        help="the small tier's model name in `scores` (with --from-log: the tier whose judged "
        "answers teach, default the config's first tier)",
    )
    cal.add_argument(
        "--large",
        help="the large tier's model name in `scores` (with --from-log: default the last tier)",
    )
    cal.add_argument(
        "--target",
        default="pgr=0.8",
        help="large_share=X (share of large-tier calls) or "
        "pgr=X (quality gap to recover); default pgr=0.8",
    )
    cal.add_argument(
        "--model",
        default="auto",
        choices=["auto", "logistic", "knn", "ensemble", "centroid", "anchors", "stacked"],
    )
    cal.add_argument(
        "--general",
        type=Path,
        nargs="+",
        help="labelled JSONL of everyday requests (simple or complex, same model names), for "
        "--model stacked: e.g. `tierroute data convert everyday data/everyday -o everyday.jsonl`",
    )
    cal.add_argument(
        "--prior",
        help="artifact to shrink toward and to beat out of fold (default: the config's "
        "router.artifact when its scorer is learned, else the shipped default "
        "artifacts/router-default; `none` for no prior)",
    )
    cal.add_argument(
        "--force",
        action="store_true",
        help="write the artifact even when it does not beat the prior out of fold",
    )
    cal.add_argument(
        "--split",
        default="calibrate",
        choices=["calibrate", "all"],
        help="calibrate: fit on the hash-chosen half, leaving the other for `eval`",
    )
    cal.add_argument("-o", "--out", type=Path, required=True, help="artifact folder")
    cal.add_argument("--config", type=Path, help=config_help)
    cal.add_argument("--cache-dir", type=Path, help="cache embeddings here")
    cal.set_defaults(run=later("cmd_calibrate"))

    ev = commands.add_parser("eval", help="RouteLLM's metrics for an artifact and baselines")
    ev.add_argument("data", type=Path, nargs="+", help="labelled JSONL file(s)")
    ev.add_argument("--artifact", type=Path, required=True)
    ev.add_argument(
        "--split",
        default="eval",
        choices=["eval", "all"],
        help="eval: the half `calibrate` left out (and refit every scorer kind on the other)",
    )
    ev.add_argument("--name", help="title of the table and plot")
    ev.add_argument("--out", type=Path, help="write the results as JSON here")
    ev.add_argument("--plot", type=Path, help="write a PNG of quality against large-tier share")
    ev.add_argument("--config", type=Path, help=config_help)
    ev.add_argument("--cache-dir", type=Path, help="cache embeddings here")
    ev.set_defaults(run=later("cmd_eval"))

    def eval_n(args: argparse.Namespace) -> int:
        from tierroute.quality import evaluate_n  # numpy/scikit-learn work: only when asked

        return evaluate_n.cmd_eval_n(args)

    en = commands.add_parser(
        "eval-n",
        help="fit the N-model quality router on training files; measure it on test and unseen "
        "files against every single model and the random router",
    )
    en.add_argument("--train", type=Path, nargs="+", required=True, help="labelled JSONL")
    en.add_argument("--test", type=Path, nargs="*", default=[], help="held-out labelled JSONL")
    en.add_argument(
        "--unseen", type=Path, nargs="*", default=[], help="labelled JSONL of tasks not trained on"
    )
    en.add_argument("--goal", type=float, default=3.0, help="points over the best single model")
    en.add_argument("--goal-unseen", type=float, default=2.0)
    en.add_argument(
        "--price",
        action="append",
        default=[],
        metavar="MODEL=USD",
        help="price per 1k tokens of a model (every model, for the cost/quality curve)",
    )
    en.add_argument("--artifact-out", type=Path, help="write the fitted artifact here")
    en.add_argument("--work", type=Path, default=Path("build/quality"))
    en.add_argument("--out", type=Path, help="write the results as JSON here")
    en.add_argument("--plot", type=Path, help="write the cost/quality PNG here (needs --price)")
    en.add_argument("--config", type=Path, help=config_help)
    en.add_argument("--cache-dir", type=Path, help="cache embeddings here")
    en.set_defaults(run=eval_n)
