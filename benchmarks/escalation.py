"""Which escalation signal tells a small model's right answers from its wrong ones?

Starts the embedded default's small tier (SmolLM2-135M on vLLM's CPU build) and asks it every
question of data/checkable/questions.yaml, greedy, the way Route asks a validated tier: the
answer envelope (JSON with a self-reported confidence) under its JSON schema, with token
log-probabilities and the top 5 alternatives per token. An answer is right when its content
contains one of the accepted answers. Each signal's AUC (right answers scored above wrong ones,
bootstrap 95% interval):

- self-reported: the envelope's `confidence_score` (0 when the answer is not a valid envelope);
- mean log-prob: the mean log-probability of the answer's own tokens (the envelope's keys and
  punctuation, forced by the schema, left out);
- min log-prob: the lowest of them;
- entropy: minus the mean entropy of their top-5 distributions (renormalised);
- combination: a logistic regression over the four, its AUC from 5-fold out-of-fold scores.

Each question is also asked for a plain answer, as Route asks a tier whose validation is
`logprob`, and the log-prob signals of that answer are judged against its own correctness.

Prints a table and writes benchmarks/results/escalation.json.

    make bench-escalation      # or: .venv/bin/python benchmarks/escalation.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS, ROOT, machine, write_result
from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.core import envelope
from tierroute.quality.evaluate import bootstrap
from tierroute.quality.fitting import auc
from tierroute.tier.v1 import tier_service_pb2 as tier_pb
from tierroute.tier.v1 import tier_service_pb2_grpc as tier_grpc

QUESTIONS = ROOT / "data" / "checkable" / "questions.yaml"
SIGNALS = ("self-reported", "mean log-prob", "min log-prob", "entropy")


def normalised(text: str) -> str:
    return " " + re.sub(r"[^a-z0-9/\-]+", " ", text.lower()) + " "


def right(content: str, answers: list[str]) -> bool:
    """Whether `content` contains an accepted answer as a whole word or number."""
    text = normalised(content)
    return any(normalised(a) in text for a in answers)


def signals(text: str, logprobs: list[common_pb.TokenLogprob]) -> tuple[str, dict[str, float]]:
    """The answer's content and each signal's value (higher: more likely right)."""
    try:
        env = envelope.parse(text)
        content, confidence = env.content, env.confidence
    except ValueError:
        content, confidence = text, 0.0
    # Only the tokens of the answer itself: the envelope's keys and punctuation are forced by
    # the JSON schema, and their log-probabilities say nothing about the answer.
    start = text.find(json.dumps(content)[1:-1]) if content else -1
    end = start + len(json.dumps(content)) - 2
    tokens, position = [], 0
    for t in logprobs:
        if start >= 0 and position < end and position + len(t.token) > start:
            tokens.append(t)
        position += len(t.token)
    tokens = tokens or list(logprobs)
    values = np.array([t.logprob for t in tokens]) if tokens else np.array([-10.0])
    entropies = []
    for t in tokens:
        p = np.exp([a.logprob for a in t.top]) if t.top else np.array([1.0])
        p = p / p.sum()
        entropies.append(float(-(p * np.log(np.maximum(p, 1e-12))).sum()))
    return content, {
        "self-reported": confidence,
        "mean log-prob": float(values.mean()),
        "min log-prob": float(values.min()),
        "entropy": -float(np.mean(entropies)) if entropies else 0.0,
    }


async def ask(
    stub: tier_grpc.TierServiceStub, question: str, enveloped: bool = True
) -> tuple[str, list[Any]]:
    """The tier's greedy answer, asked as Route asks a `self_reported` tier (`enveloped`) or a
    `logprob` one (a plain answer), with its token log-probabilities."""
    system = [common_pb.ChatMessage(role="system", content=envelope.INSTRUCTION)]
    request = tier_pb.GenerateRequest(
        messages=[
            *(system if enveloped else []),
            common_pb.ChatMessage(role="user", content=question),
        ],
        sampling=common_pb.SamplingParams(max_tokens=64, temperature=0.0),
        json_schema=envelope.SCHEMA if enveloped else "",
        logprobs=True,
        top_logprobs=5,
    )
    parts: list[str] = []
    logprobs: list[Any] = []
    async for response in stub.Generate(request, timeout=600):
        if response.HasField("chunk"):
            parts.append(response.chunk.text)
            logprobs.extend(response.chunk.logprobs)
    return "".join(parts), logprobs


def out_of_fold_combination(x: np.ndarray, y: np.ndarray, k: int = 5) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    folds = np.arange(len(y)) % k
    scores = np.zeros(len(y))
    for f in range(k):
        train = folds != f
        model = LogisticRegression(max_iter=1000).fit(
            (x[train] - x[train].mean(0)) / (x[train].std(0) + 1e-9), y[train]
        )
        test = (x[~train] - x[train].mean(0)) / (x[train].std(0) + 1e-9)
        scores[~train] = model.decision_function(test)
    return scores


async def measure(concurrency: int) -> list[dict[str, Any]]:
    from tests.helpers.services import start_tier

    doc = yaml.safe_load(QUESTIONS.read_text())
    items = [(kind, q["q"], q["answers"]) for kind, qs in doc.items() for q in qs]
    with tempfile.TemporaryDirectory() as tmp:
        tier = await asyncio.to_thread(start_tier, Path(tmp) / "tier.log")
        try:
            async with grpc.aio.insecure_channel(tier.address) as channel:
                stub = tier_grpc.TierServiceStub(channel)
                gate = asyncio.Semaphore(concurrency)

                async def one(kind: str, question: str, answers: list[str]) -> dict[str, Any]:
                    async with gate:
                        text, logprobs = await ask(stub, question)
                        plain, plain_logprobs = await ask(stub, question, enveloped=False)
                    content, values = signals(text, logprobs)
                    _, plain_values = signals(plain, plain_logprobs)
                    return {
                        "kind": kind,
                        "question": question,
                        "answer": content,
                        "right": right(content, answers),
                        "signals": values,
                        "plain_answer": plain,
                        "plain_right": right(plain, answers),
                        "plain_signals": plain_values,
                    }

                return list(await asyncio.gather(*(one(*item) for item in items)))
        finally:
            tier.stop()


def _auc_row(values: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    return {
        "auc": auc(values, y),
        "ci95": bootstrap(
            lambda i: auc(values[i], y[i]) if 0 < y[i].sum() < len(i) else 0.5, len(y)
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS / "escalation.json")
    args = parser.parse_args(argv)
    rows = asyncio.run(measure(args.concurrency))
    y = np.array([r["right"] for r in rows])
    x = np.array([[r["signals"][s] for s in SIGNALS] for r in rows])
    table: dict[str, Any] = {}
    columns = {s: x[:, i] for i, s in enumerate(SIGNALS)}
    columns["combination (5-fold)"] = out_of_fold_combination(x, y.astype(int))
    for name, values in columns.items():
        table[name] = _auc_row(values, y)
    # The logprob policy as Route runs it: a plain answer, judged on its own correctness.
    y_plain = np.array([r["plain_right"] for r in rows])
    for s in ("mean log-prob", "entropy"):
        values = np.array([r["plain_signals"][s] for r in rows])
        table[f"{s}, plain answer"] = _auc_row(values, y_plain)
    print(
        f"\n{len(rows)} questions, {int(y.sum())} answered right in the envelope ({y.mean():.0%}), "
        f"{int(y_plain.sum())} as a plain answer ({y_plain.mean():.0%})"
    )
    for kind in sorted({r["kind"] for r in rows}):
        of = [r for r in rows if r["kind"] == kind]
        print(f"  {kind}: {sum(r['right'] for r in of)} of {len(of)} right")
    print(f"\n{'signal':<24}{'AUC':>7}  95% CI")
    for name, r in table.items():
        print(f"{name:<24}{r['auc']:>7.3f}  {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}")
    write_result(
        args.out,
        {
            "benchmark": "escalation signals",
            "command": "make bench-escalation",
            "machine": machine(),
            "model": "SmolLM2-135M-Instruct (the embedded default's small tier), greedy",
            "questions": len(rows),
            "right": int(y.sum()),
            "right_plain": int(y_plain.sum()),
            "signals": table,
            "answers": rows,
        },
    )
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
