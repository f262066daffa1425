"""Benchmarking the tiers (`tierroute bench-tiers`): every tier's speed, errors and cost,
measured on a stratified sample of prompts and written to the metrics store the router
routes on.

Each prompt of the sample (by default the router's `data/tier-sample.jsonl`: six kinds of
request; provenance in `data/tier-sample.md`)
is sent `--runs` times to every tier's Generate RPC, streaming, at most `--concurrency` calls at
a time over all tiers. Per tier and per category (and over all categories) it measures time to
first token (p50, p95), time per output token, output tokens per second, the error rate and
the cost per 1,000 tokens: from the tier's prices per token, or, for a tier priced by the hour
(`price_per_hour_usd`), that price over the throughput measured at this concurrency.

The figures go into the metrics store (`router.metrics_store`) as observations weighing as many
calls as they were measured on, blended there with what routers observed on live traffic; the
whole table is kept beside them, with the time and each tier's model identity (its Describe).
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.core.config import Config, TierConfig
from tierroute.router.tiers.client import TierClient, TierError, connect
from tierroute.tier.v1 import tier_service_pb2 as tier_pb

DEFAULT_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "tier-sample.jsonl"
ALL = ""  # the category of a tier's figures over every category


class TierUnreachable(Exception):
    """A tier did not answer Describe before the run."""


@dataclass(frozen=True)
class Prompt:
    text: str
    category: str


def read_sample(path: Path) -> list[Prompt]:
    """The prompts of a JSONL file: `prompt` and optional `category` per line. ValueError,
    naming the file and line, for anything else."""
    prompts = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc}); the sample is JSONL") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path}, line {number}: not JSON ({exc.msg}); the sample is JSONL, one "
                'object per line: {"prompt": "...", "category": "..."}'
            ) from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ValueError(f'{path}, line {number}: needs a "prompt" string')
        if not row["prompt"].strip():
            raise ValueError(f"{path}, line {number}: the prompt is empty")
        category = row.get("category", "uncategorised")
        if not isinstance(category, str) or not category:
            raise ValueError(f'{path}, line {number}: "category" must be a non-empty string')
        prompts.append(Prompt(row["prompt"], category))
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


@dataclass
class Call:
    """One measured Generate call."""

    category: str
    ok: bool
    ttft_ms: float = 0.0
    total_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    error: str = ""


@dataclass
class Progress:
    total: int
    out: TextIO = field(default_factory=lambda: sys.stderr)
    done: int = 0

    def step(self, label: str) -> None:
        self.done += 1
        width = 30
        filled = width * self.done // max(self.total, 1)
        self.out.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {label:<24}"
        )
        if self.done == self.total:
            self.out.write("\n")
        self.out.flush()


async def _call(client: TierClient, prompt: Prompt, max_tokens: int, call_seconds: float) -> Call:
    request = tier_pb.GenerateRequest(
        messages=[common_pb.ChatMessage(role="user", content=prompt.text)],
        sampling=common_pb.SamplingParams(max_tokens=max_tokens, temperature=0.0),
    )
    started = time.perf_counter()
    first = None
    try:
        async for response in client.generate(request, call_seconds):
            if response.HasField("complete"):
                c = response.complete
                end = time.perf_counter()
                return Call(
                    prompt.category,
                    True,
                    ((first or end) - started) * 1000.0,
                    (end - started) * 1000.0,
                    c.prompt_tokens,
                    c.completion_tokens,
                    c.cost_usd,
                )
            if first is None and response.chunk.text:
                first = time.perf_counter()
    except TierError as error:
        return Call(prompt.category, False, error=str(error))
    return Call(prompt.category, False, error="the stream ended without its summary")


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def summarize(tier: TierConfig, calls: Sequence[Call], wall_seconds: float) -> dict[str, Any]:
    """One tier's (or one category's) figures from its calls."""
    ok = [c for c in calls if c.ok]
    row: dict[str, Any] = {"calls": len(calls), "errors": len(calls) - len(ok)}
    row["error_rate"] = row["errors"] / len(calls) if calls else 0.0
    if not ok:
        return row
    tokens = sum(c.prompt_tokens + c.completion_tokens for c in ok)
    out_tokens = sum(c.completion_tokens for c in ok)
    per_token = [
        (c.total_ms - c.ttft_ms) / (c.completion_tokens - 1) for c in ok if c.completion_tokens > 1
    ]
    decode_seconds = sum(c.total_ms - c.ttft_ms for c in ok) / 1000.0
    row.update(
        ttft_p50_ms=_percentile([c.ttft_ms for c in ok], 0.5),
        ttft_p95_ms=_percentile([c.ttft_ms for c in ok], 0.95),
        ttft_mean_ms=sum(c.ttft_ms for c in ok) / len(ok),
        tpot_ms=sum(per_token) / len(per_token) if per_token else None,
        # Per stream, while it decodes; and over the run, as the tier served them all.
        output_tokens_per_s=out_tokens / decode_seconds if decode_seconds > 0 else None,
        throughput_tokens_per_s=out_tokens / wall_seconds if wall_seconds > 0 else None,
    )
    if tier.price_per_hour_usd > 0 and row["throughput_tokens_per_s"]:
        row["cost_per_1k_usd"] = (
            tier.price_per_hour_usd / 3600 / row["throughput_tokens_per_s"] * 1000
        )
        row["cost_basis"] = "price_per_hour_usd / measured throughput"
    else:
        row["cost_per_1k_usd"] = sum(c.cost_usd for c in ok) / tokens * 1000 if tokens else 0.0
        row["cost_basis"] = "price per 1k input and output tokens"
    return row


async def run(
    cfg: Config,
    prompts: Sequence[Prompt],
    runs: int,
    concurrency: int,
    max_tokens: int,
    call_seconds: float,
    tiers: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Measure every tier (or `tiers`); the table: one row per tier and category, then one per
    tier over all categories (category "")."""
    chosen = [t for t in cfg.tiers if tiers is None or t.name in tiers]
    limit = asyncio.Semaphore(concurrency)
    rows: list[dict[str, Any]] = []
    clients = {t.name: connect(t, t.address, cfg.tls) for t in chosen}
    try:
        models = {}
        for t in chosen:
            try:
                described = await clients[t.name].describe(call_seconds)
            except TierError as error:
                raise TierUnreachable(
                    f"tier {t.name} at {t.address}: {error}; is it running (make run starts "
                    "the suite)?"
                ) from None
            models[t.name] = described.model or t.model

        calls: dict[str, list[Call]] = defaultdict(list)
        walls: dict[str, list[float]] = defaultdict(list)

        async def one(t: TierConfig, prompt: Prompt) -> None:
            async with limit:
                started = time.perf_counter()
                call = await _call(clients[t.name], prompt, max_tokens, call_seconds)
                walls[t.name].append(started)
                walls[t.name].append(time.perf_counter())
            calls[t.name].append(call)
            if progress is not None:
                progress.step(t.name)

        await asyncio.gather(*(one(t, p) for _ in range(runs) for t in chosen for p in prompts))
        at = time.time()
        for t in chosen:
            wall = (max(walls[t.name]) - min(walls[t.name])) if walls[t.name] else 0.0
            by_category: dict[str, list[Call]] = defaultdict(list)
            for c in calls[t.name]:
                by_category[c.category].append(c)
            for category in [*sorted(by_category), ALL]:
                subset = calls[t.name] if category == ALL else by_category[category]
                share = len(subset) / max(len(calls[t.name]), 1)
                row = summarize(t, subset, wall * share)
                row.update(at=at, tier=t.name, model=models[t.name], category=category)
                errors = sorted({c.error for c in subset if not c.ok})
                if errors:
                    row["error_examples"] = errors[:3]
                rows.append(row)
    finally:
        for client in clients.values():
            await client.close()
    return rows


def observations(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str], Any]:
    """The table as metrics-store figures, each weighing the calls it was measured on."""
    from tierroute.router.tiers.measured import ERROR_RATE, TPOT_MS, TTFT_MS
    from tierroute.router.tiers.store import Figure

    out = {}
    for row in rows:
        key = (row["tier"], row["category"])
        if row["calls"]:
            out[(*key, ERROR_RATE)] = Figure(row["error_rate"], float(row["calls"]), row["at"])
        ok = row["calls"] - row["errors"]
        if ok and row.get("ttft_mean_ms") is not None:
            out[(*key, TTFT_MS)] = Figure(row["ttft_mean_ms"], float(ok), row["at"])
        if ok and row.get("tpot_ms") is not None:
            out[(*key, TPOT_MS)] = Figure(row["tpot_ms"], float(ok), row["at"])
    return out


def table(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        f"{'tier':<10}{'category':<24}{'calls':>6}{'err%':>6}{'TTFT p50':>10}{'p95 ms':>8}"
        f"{'ms/tok':>8}{'tok/s':>7}{'$/1k tok':>10}"
    )
    lines = [header]

    def fmt(v: Any, spec: str) -> str:
        return format(v, spec) if isinstance(v, int | float) else "-"

    for r in rows:
        lines.append(
            f"{r['tier']:<10}{r['category'] or '(all)':<24}{r['calls']:>6}"
            f"{100 * r['error_rate']:>6.1f}{fmt(r.get('ttft_p50_ms'), '>10.0f')}"
            f"{fmt(r.get('ttft_p95_ms'), '>8.0f')}{fmt(r.get('tpot_ms'), '>8.1f')}"
            f"{fmt(r.get('output_tokens_per_s'), '>7.1f')}{fmt(r.get('cost_per_1k_usd'), '>10.5f')}"
        )
    return "\n".join(lines)
