"""`tierroute eval-n`: the N-model quality router (tierroute.quality.multi), fitted on training
files only and measured on test files and on unseen tasks, against every single model, the
random router, the per-prompt oracle and the published figures; with configured prices, a
cost/quality curve as a PNG.

Every file counts alike in an average (as RouterDC reports it): a file is one benchmark.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np

from tierroute.core.prompts import normalize
from tierroute.quality import multi
from tierroute.quality.calibrate import to_json
from tierroute.quality.evaluate import context, machine
from tierroute.quality.fitting import embed_texts
from tierroute.quality.labelled import DataError, Row, read_rows

logger = logging.getLogger(__name__)

RESAMPLES = 1000
# What the RouterDC paper reports over the best single model (arXiv 2409.19886).
PUBLISHED_GAIN = {"in_distribution": 2.76, "unseen": 1.90}


def parse_prices(items: list[str]) -> dict[str, float]:
    prices = {}
    for item in items:
        model, sep, value = item.rpartition("=")
        try:
            price = float(value)
        except ValueError:
            price = -1.0
        if not sep or not model or not price >= 0:
            raise DataError(f"--price {item!r}: write MODEL=USD_PER_1K_TOKENS, a number >= 0")
        prices[model] = price
    return prices


def _sets(ctx: Any, paths: list[Path]) -> list[tuple[str, list[Row], np.ndarray]]:
    out = []
    for path in paths:
        rows = read_rows(path)
        x = embed_texts([normalize(r.prompt) for r in rows], ctx.embedder(), ctx.cache_dir)
        out.append((path.name.removesuffix(".jsonl"), rows, x))
    return out


def measure(
    arrays: dict[str, np.ndarray],
    models: tuple[str, ...],
    sets: list[tuple[str, list[Row], np.ndarray]],
    category_best: dict[str, str],
    goal: float,
    published: float,
    seed: int = 0,
) -> dict[str, Any]:
    """The router's quality per set and on average, against every model, random and oracle;
    the gain over the best single model with a 95% bootstrap interval (prompts resampled
    within each set)."""
    per_set: dict[str, Any] = {}
    got, ys = [], []
    for name, rows, x in sets:
        t = multi.table(rows, x, models)
        chosen = multi.predict(arrays, t.x).argmax(axis=1)
        ys.append(t.y)
        got.append(t.y[np.arange(len(t.y)), chosen])
        share = np.bincount(chosen, minlength=len(models)) / len(chosen)
        by_category = [category_best.get(r.category) for r in rows]
        per_set[name] = {
            "prompts": len(rows),
            "router": float(got[-1].mean()),
            "models": {m: float(t.y[:, i].mean()) for i, m in enumerate(models)},
            "random": float(t.y.mean()),
            "oracle": float(t.y.max(axis=1).mean()),
            "category_best_from_training": (
                float(np.mean([t.y[j, models.index(m)] for j, m in enumerate(by_category)]))
                if all(by_category)
                else None
            ),
            "chosen_share": {m: float(s) for m, s in zip(models, share, strict=True) if s > 0},
        }
    single = {m: float(np.mean([s["models"][m] for s in per_set.values()])) for m in models}
    best = max(single, key=single.__getitem__)
    router = float(np.mean([g.mean() for g in got]))
    rng = np.random.default_rng(seed)
    column = models.index(best)
    gains = []
    for _ in range(RESAMPLES):
        diffs = []
        for g, y in zip(got, ys, strict=True):
            pick = rng.integers(0, len(g), len(g))
            diffs.append(g[pick].mean() - y[pick, column].mean())
        gains.append(100 * float(np.mean(diffs)))
    gain = 100 * (router - single[best])
    return {
        "sets": per_set,
        "router": router,
        "single_models": single,
        "best_single": {"model": best, "quality": single[best]},
        "random": float(np.mean([s["random"] for s in per_set.values()])),
        "oracle": float(np.mean([s["oracle"] for s in per_set.values()])),
        "gain_points": gain,
        "gain_ci95": [float(np.percentile(gains, 2.5)), float(np.percentile(gains, 97.5))],
        "goal_points": goal,
        "goal_met": gain >= goal,
        "published_gain_points": published,
    }


def cost_curve(
    arrays: dict[str, np.ndarray],
    models: tuple[str, ...],
    sets: list[tuple[str, list[Row], np.ndarray]],
    prices: dict[str, float],
) -> dict[str, Any]:
    """Quality against cost: the router choosing argmax(predicted quality - mu * price / top
    price) for mu from 0 (quality only) to 4, every single model, and the random router."""
    price = np.array([prices[m] for m in models])
    top = max(float(price.max()), 1e-12)
    points = []
    for mu in np.linspace(0.0, 4.0, 41):
        quality, cost = [], []
        for _, rows, x in sets:
            t = multi.table(rows, x, models)
            chosen = (multi.predict(arrays, t.x) - mu * price / top).argmax(axis=1)
            quality.append(t.y[np.arange(len(t.y)), chosen].mean())
            cost.append(price[chosen].mean())
        points.append([float(np.mean(cost)), float(np.mean(quality)), float(mu)])
    return {
        "prices_per_1k": prices,
        "router": points,
        "models": {m: [prices[m]] for m in models},
        "random_cost_per_1k": float(price.mean()),
    }


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = result["cost_curve"]
    ind = result["in_distribution"]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    pts = np.array(curve["router"])
    ax.plot(pts[:, 0], 100 * pts[:, 1], "o-", ms=3, label="tierroute N-model router")
    for m, (price,) in curve["models"].items():
        q = 100 * ind["single_models"][m]
        ax.plot([price], [q], "s", ms=6)
        ax.annotate(
            m.split("/")[-1], (price, q), fontsize=7, xytext=(4, 2), textcoords="offset points"
        )
    ax.plot([curve["random_cost_per_1k"]], [100 * ind["random"]], "kx", ms=9, label="random router")
    ax.set_xlabel("cost, USD per 1k tokens (configured prices)")
    ax.set_ylabel("mean accuracy over the test sets, %")
    ax.set_title("RouterDC7 test splits: quality against cost")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def print_table(title: str, r: dict[str, Any]) -> None:
    print(f"\n{title}")
    names = list(r["sets"])
    print(f"  {'':<34}" + "".join(f"{n[:14]:>15}" for n in names) + f"{'average':>10}")

    def line(label: str, values: list[float], avg: float) -> None:
        print(
            f"  {label[:34]:<34}"
            + "".join(f"{100 * v:>15.1f}" for v in values)
            + f"{100 * avg:>10.2f}"
        )

    line("tierroute", [r["sets"][n]["router"] for n in names], r["router"])
    for m, avg in sorted(r["single_models"].items(), key=lambda kv: -kv[1]):
        line(m.split("/")[-1], [r["sets"][n]["models"][m] for n in names], avg)
    line("random", [r["sets"][n]["random"] for n in names], r["random"])
    line("oracle", [r["sets"][n]["oracle"] for n in names], r["oracle"])
    lo, hi = r["gain_ci95"]
    print(
        f"  gain over the best single model ({r['best_single']['model'].split('/')[-1]}): "
        f"{r['gain_points']:+.2f} points (95% CI {lo:+.2f} to {hi:+.2f}); goal "
        f"+{r['goal_points']:g}: {'met' if r['goal_met'] else 'MISSED'}; RouterDC published "
        f"+{r['published_gain_points']:g}"
    )


def cmd_eval_n(args: argparse.Namespace) -> int:
    ctx = context(args.config, args.cache_dir)
    train = _sets(ctx, args.train)
    rows = [r for _, rs, _ in train for r in rs]
    x = np.concatenate([x for _, _, x in train])
    out = args.artifact_out or args.work / "quality-n-artifact"
    described = "train: " + ", ".join(p.name for p in args.train)
    meta = multi.calibrate_quality(rows, x, out, ctx.embedder().version, described)
    from tierroute.quality.artifact import load_artifact

    _, arrays = load_artifact(out)
    models = tuple(meta["models"])
    t = multi.table(rows, x, models)
    category_best = {
        c: models[int(t.y[t.category == i].mean(axis=0).argmax())]
        for i, c in enumerate(t.categories)
        if (t.category == i).any()
    }
    result: dict[str, Any] = {
        "command": args.command_line,
        "machine": machine(),
        "embedder_version": ctx.embedder().version,
        "artifact": {k: meta[k] for k in ("version", "params", "cross_validation", "data")},
        "train": {name: len(rs) for name, rs, _ in train},
    }
    print(f"fitted on {len(rows)} rows; chosen by {multi.K_FOLDS}-fold CV: {meta['params']}")
    if args.test:
        result["in_distribution"] = measure(
            arrays,
            models,
            _sets(ctx, args.test),
            category_best,
            args.goal,
            PUBLISHED_GAIN["in_distribution"],
        )
        print_table("test splits (not seen in fitting)", result["in_distribution"])
    if args.unseen:
        result["unseen"] = measure(
            arrays,
            models,
            _sets(ctx, args.unseen),
            {},
            args.goal_unseen,
            PUBLISHED_GAIN["unseen"],
        )
        print_table("unseen tasks", result["unseen"])
    if args.price and args.test:
        prices = parse_prices(args.price)
        missing = [m for m in models if m not in prices]
        if missing:
            raise DataError(f"--price has no price for {missing}: give every model one")
        result["cost_curve"] = cost_curve(arrays, models, _sets(ctx, args.test), prices)
        if args.plot:
            plot(result, args.plot)
            print(f"wrote {args.plot}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(to_json(result) + "\n")
        print(f"wrote {args.out}")
    print(f"artifact {meta['version']} in {out}")
    return 0
