"""Streaming a validated tier without holding back its whole answer: prefix commit against full
buffering, side by side in one run, with the tiers direct as the bounds.

Starts the configured suite (`--config`, the embedded default unless told): both tiers, the
validator, and three routers on them that differ only in the small tier's `commit`: `full`
(the answer held until the validator has judged all of it), `prefix` (judged on its first
`--prefix` tokens' log-probabilities, streamed from then on if they clear the bar, escalated
before anything is sent if not), and `prefix` with hedging (`hedge_margin` `--hedge-margin`:
a score that close to the small tier's bound also starts the large tier at once; the commit
decision cancels the loser). The small tier is validated by `logprob` at the config's
`escalation.min_confidence`.

Workload: the questions of data/checkable whose answers a program checks (`--questions` of
them, every kind in proportion, drawn with `--seed`), one user turn, greedy, at most
`--max-tokens` tokens, one request at a time, each question through each of five ways in a
rotating order: small tier direct, large tier direct (Generate), Route with commit full,
Route with commit prefix, Route with prefix and hedging. Reported per way: time to first
token p50/p95 (over every answer, and over the answers the small tier delivered), share
answered right (95% bootstrap interval), share escalated, share hedged, mean cost.

And, on every question of data/checkable, how often the decision on the prefix agrees with the
decision on the whole answer (the validator's logprob rule, exp(mean log-prob) >= the bar), for
prefixes of 4, 8, 16 and 32 tokens, computed from the small tier's own greedy answers with
their log-probabilities (the answers the routers' small tier gives, greedy): the prefix alone,
and as the router decides with `commit_prefix_margin` (`--prefix-margin`): a prefix too close
to call is judged again every k more tokens, and on the whole answer if none decides. The
log-probabilities are kept in the JSON, so the rule can be re-run offline.

Goals (issue 16): a delivered small-tier answer's TTFT with prefix commit at most the direct
small tier's TTFT plus the time to decode the prefix; the prefix decision agreeing with the
full-answer decision on >= 95% of questions.

    make bench-commit         # or: .venv/bin/python benchmarks/bench_commit.py
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_e2e import percentile, start_router_variant, via_generate, via_route
from benchmarks.common import RESULTS, machine, start_suite, write_result
from benchmarks.escalation import QUESTIONS
from tierroute.core.config import Config, TierConfig, load_config
from tierroute.quality.evaluate import bootstrap
from tierroute.router.v1 import router_service_pb2_grpc as pb_grpc
from tierroute.tier.v1 import tier_service_pb2_grpc as tier_grpc
from tierroute.validator.policies import too_close

WAYS = (
    "small direct",
    "large direct",
    "Route, commit full",
    "Route, commit prefix",
    "Route, prefix + hedge",
)
PREFIXES = (4, 8, 16, 32)


def questions() -> list[dict[str, Any]]:
    doc = yaml.safe_load(QUESTIONS.read_text())
    return [
        {"kind": k, "prompt": q["q"], "answers": q["answers"]} for k, qs in doc.items() for q in qs
    ]


def drawn(items: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """`n` questions, every kind in proportion."""
    rng = random.Random(seed)
    kinds = sorted({i["kind"] for i in items})
    out = []
    for kind in kinds:
        of = [i for i in items if i["kind"] == kind]
        out += rng.sample(of, max(1, round(n * len(of) / len(items))))
    rng.shuffle(out)
    return out[:n]


def sequential(logprobs: list[float], bar: float, step: int, margin: float) -> tuple[bool, int]:
    """Whether a prefix-committed answer is delivered, and on how many tokens that was
    decided, as the router and the validator decide it: a prefix of `step` tokens, then every
    `step` more while the prefix is too close to call (`margin` standard errors), else the
    whole answer."""
    at = step
    while at <= len(logprobs):
        prefix = logprobs[:at]
        if not too_close(prefix, bar, margin):
            return math.exp(statistics.fmean(prefix)) >= bar, at
        at += step
    return math.exp(statistics.fmean(logprobs)) >= bar, len(logprobs)


def agreement(answers: list[list[float]], bar: float, margin: float) -> dict[str, Any]:
    """How often the decision on a prefix of k tokens agrees with the one on the whole answer:
    the prefix alone (margin 0), and with the tier's `commit_prefix_margin`."""
    answers = [v for v in answers if v]
    full = [math.exp(statistics.fmean(v)) >= bar for v in answers]
    out: dict[str, Any] = {"questions": len(full), "delivered_full": sum(full), "margin": margin}
    for k in PREFIXES:
        for m in (0.0, margin):
            decided = [sequential(v, bar, k, m) for v in answers]
            prefix = [d for d, _ in decided]
            same = [a == b for a, b in zip(prefix, full, strict=True)]
            out[f"prefix {k}" if m == 0 else f"prefix {k}, margin {m:g}"] = {
                "agreement": sum(same) / len(same),
                "delivered": sum(prefix),
                # Decided to deliver on the prefix, but the whole answer would have escalated.
                "delivered_but_full_escalates": sum(
                    p and not f for p, f in zip(prefix, full, strict=True)
                ),
                # How many tokens the decision waited for (the whole answer, if shorter).
                "decided_at_tokens_p50": statistics.median(at for _, at in decided),
                "decided_on_whole_answer": sum(
                    at >= len(v) for (_, at), v in zip(decided, answers, strict=True)
                ),
            }
    return out


async def bench(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:

    root = Path(tempfile.mkdtemp(prefix="bench-commit-"))
    started: list[Any] = []
    try:
        tiers, validator = await start_suite(args.config, cfg, root, started)
        routers = {}
        for commit in ("full", "prefix", "hedge"):

            def change(doc: dict[str, Any], commit: str = commit) -> None:
                doc["tiers"][0].update(
                    validation="logprob",
                    commit="full" if commit == "full" else "prefix",
                    commit_prefix_tokens=args.prefix,
                    commit_prefix_margin=args.prefix_margin,
                )
                if commit == "hedge":
                    doc["tiers"][0]["hedge_margin"] = args.hedge_margin

            routers[commit] = await start_router_variant(
                cfg, tiers, validator.address, root / commit, change
            )
            started.append(routers[commit])
        small, large = cfg.tiers[0].name, cfg.tiers[-1].name
        channels = {
            "small": grpc.aio.insecure_channel(tiers[small]),
            "large": grpc.aio.insecure_channel(tiers[large]),
            "full": grpc.aio.insecure_channel(routers["full"].address),
            "prefix": grpc.aio.insecure_channel(routers["prefix"].address),
            "hedge": grpc.aio.insecure_channel(routers["hedge"].address),
        }
        try:
            s_stub = tier_grpc.TierServiceStub(channels["small"])
            l_stub = tier_grpc.TierServiceStub(channels["large"])
            f_stub = pb_grpc.RouterServiceStub(channels["full"])
            p_stub = pb_grpc.RouterServiceStub(channels["prefix"])
            h_stub = pb_grpc.RouterServiceStub(channels["hedge"])
            ways = {
                WAYS[0]: lambda item: via_generate(s_stub, item, args.max_tokens, ""),
                WAYS[1]: lambda item: via_generate(l_stub, item, args.max_tokens, ""),
                WAYS[2]: lambda item: via_route(f_stub, item, args.max_tokens),
                WAYS[3]: lambda item: via_route(p_stub, item, args.max_tokens),
                WAYS[4]: lambda item: via_route(h_stub, item, args.max_tokens),
            }
            warm = {"kind": "warm-up", "prompt": "Say hello.", "answers": ["hello"]}
            for ask in ways.values():
                await ask(warm)
            samples: dict[str, list[dict[str, Any]]] = {w: [] for w in WAYS}
            items = drawn(questions(), args.questions, args.seed)
            for i, item in enumerate(items):
                print(f"question {i + 1}/{len(items)}", file=sys.stderr, end="\r")
                order = WAYS[i % len(WAYS) :] + WAYS[: i % len(WAYS)]
                for way in order:
                    samples[way].append(await ways[way](item))
            print("the small tier's log-probabilities on every question ...", file=sys.stderr)
            logprobs = []
            for item in questions():
                got = await via_generate(s_stub, item, args.max_tokens, "", logprobs=True)
                logprobs.append(got["logprobs"])
        finally:
            for channel in channels.values():
                await channel.close()
        return {"samples": samples, "logprobs": logprobs, "questions": len(items)}
    finally:
        for process in reversed(started):
            process.stop()


def figures(samples: list[dict[str, Any]], small: str) -> dict[str, Any]:
    ttft = [s["ttft_ms"] for s in samples]
    by_small = [s["ttft_ms"] for s in samples if s["tier"] == small and not s["escalated"]]
    right_ = [float(s["right"]) for s in samples]
    low, high = bootstrap(lambda i: sum(right_[j] for j in i) / len(i), len(right_))
    return {
        "ttft_p50_ms": statistics.median(ttft),
        "ttft_p95_ms": percentile(ttft, 95),
        "small_delivered": len(by_small),
        "small_ttft_p50_ms": statistics.median(by_small) if by_small else None,
        "small_ttft_p95_ms": percentile(by_small, 95) if by_small else None,
        "right": sum(right_) / len(right_),
        "right_ci95": [low, high],
        "escalated": sum(s["escalated"] for s in samples) / len(samples),
        "hedged": sum(s.get("hedged", False) for s in samples) / len(samples),
        "cost_usd_mean": statistics.mean(s["cost_usd"] for s in samples),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/default.yaml"))
    parser.add_argument("--questions", type=int, default=30)
    parser.add_argument("--prefix", type=int, default=16, help="commit_prefix_tokens")
    parser.add_argument(
        "--prefix-margin",
        type=float,
        default=TierConfig.model_fields["commit_prefix_margin"].default,
        help="commit_prefix_margin (standard errors)",
    )
    parser.add_argument(
        "--hedge-margin", type=float, default=1.5, help="the hedging router's hedge_margin"
    )
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "commit.json")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    result = asyncio.run(bench(args, cfg))
    return report(result, args, cfg)


def report(result: dict[str, Any], args: argparse.Namespace, cfg: Config) -> int:
    small = cfg.tiers[0].name
    ways = {w: figures(result["samples"][w], small) for w in WAYS}
    direct_small = result["samples"][WAYS[0]]
    tpot = statistics.median(
        (s["total_ms"] - s["ttft_ms"]) / (s["tokens"] - 1) for s in direct_small if s["tokens"] > 1
    )
    bound = ways[WAYS[0]]["ttft_p50_ms"] + args.prefix * tpot
    prefix_small = ways[WAYS[3]]["small_ttft_p50_ms"]
    bar = cfg.escalation.min_confidence
    agree = agreement(result["logprobs"], bar, args.prefix_margin)
    deciding = f"prefix {args.prefix}, margin {args.prefix_margin:g}"
    if args.prefix_margin == 0:
        deciding = f"prefix {args.prefix}"
    doc = {
        "benchmark": "prefix commit against full buffering, with the tiers direct",
        "command": "make bench-commit",
        "machine": machine(grpc=grpc.__version__),
        "workload": {
            "questions": result["questions"],
            "source": "data/checkable, every kind in proportion",
            "seed": args.seed,
            "max_tokens": args.max_tokens,
            "concurrency": 1,
            "greedy": True,
        },
        "small_tier": {
            "validation": "logprob",
            "min_confidence": bar,
            "prefix_tokens": args.prefix,
            "prefix_margin": args.prefix_margin,
            "hedge_margin": args.hedge_margin,
        },
        "ways": ways,
        "direct_small_time_per_token_ms": tpot,
        "goal_ttft_bound_ms": bound,
        "prefix_agreement": agree,
        "answer_logprobs": [[round(x, 4) for x in v] for v in result["logprobs"]],
        "goals": {
            "prefix-commit small TTFT p50 <= direct small TTFT p50 + prefix decode": (
                prefix_small is not None and prefix_small <= bound
            ),
            f"{deciding} decision agrees with the full one on >= 95%": (
                agree[deciding]["agreement"] >= 0.95 if deciding in agree else False
            ),
        },
    }
    print(f"\n{result['questions']} checkable questions, one at a time, greedy, max_tokens "
          f"{args.max_tokens}; small tier logprob at {bar:g}, "
          f"prefix {args.prefix} tokens, margin {args.prefix_margin:g}")  # fmt: skip
    print(f"{'way':<22}{'TTFT p50':>9}{'p95':>7}{'small p50':>11}{'p95':>7}"
          f"{'right':>7}{'95% CI':>12}{'escal.':>8}{'hedged':>8}{'cost/req':>10}")  # fmt: skip
    for way, f in ways.items():
        s50 = "-" if f["small_ttft_p50_ms"] is None else f"{f['small_ttft_p50_ms']:.0f}"
        s95 = "-" if f["small_ttft_p95_ms"] is None else f"{f['small_ttft_p95_ms']:.0f}"
        lo, hi = f["right_ci95"]
        print(f"{way:<22}{f['ttft_p50_ms']:>9.0f}{f['ttft_p95_ms']:>7.0f}{s50:>11}{s95:>7}"
              f"{f['right']:>7.0%}{f'{lo:.0%}-{hi:.0%}':>12}{f['escalated']:>8.0%}"
              f"{f['hedged']:>8.0%}{f['cost_usd_mean']:>10.2e}")  # fmt: skip
    print(f"\nprefix vs whole-answer decision on {agree['questions']} questions "
          f"(whole answer delivers {agree['delivered_full']}):")  # fmt: skip
    for name, a in agree.items():
        if not name.startswith("prefix"):
            continue
        print(f"  {name:<22} agreement {a['agreement']:6.1%}, delivers {a['delivered']:>3}, "
              f"{a['delivered_but_full_escalates']} of them the whole answer would escalate; "
              f"decided at {a['decided_at_tokens_p50']:g} tokens (median), "
              f"{a['decided_on_whole_answer']} on the whole answer")  # fmt: skip
    for goal, met in doc["goals"].items():
        print(f"  {'met ' if met else 'MISS'} {goal}")
    write_result(args.out, doc)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
