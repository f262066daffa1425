"""Labelled routing data: one JSONL format, converters from RouteLLM's files, and the split.

A row is `{"prompt": str, "scores": {"<tier or model>": float}}`, optionally with
`"costs": {...}` and `"category": str`. A score is the quality that model reached on that prompt:
1/0 correctness, or a 1-10 judge rating.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STRONG = "gpt-4-1106-preview"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"


class DataError(ValueError):
    """Labelled data that cannot be used; the message names the file, line and problem."""


@dataclass(frozen=True)
class Row:
    prompt: str
    scores: dict[str, float]
    category: str = ""
    costs: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        doc: dict[str, Any] = {"prompt": self.prompt, "scores": self.scores}
        if self.category:
            doc["category"] = self.category
        if self.costs:
            doc["costs"] = self.costs
        return json.dumps(doc, ensure_ascii=False, sort_keys=True)


def read_rows(path: Path) -> list[Row]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                doc = json.loads(line)
            except ValueError as exc:
                raise DataError(f"{where}: not JSON ({exc})") from exc
            if not isinstance(doc, dict):
                raise DataError(f"{where}: a row must be a JSON object")
            prompt, scores = doc.get("prompt"), doc.get("scores")
            if not isinstance(prompt, str) or not prompt.strip():
                raise DataError(f"{where}: `prompt` must be a non-empty string")
            if not isinstance(scores, dict) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in scores.values()
            ):
                raise DataError(f"{where}: `scores` must map model names to numbers")
            unknown = set(doc) - {"prompt", "scores", "category", "costs"}
            if unknown:
                raise DataError(f"{where}: unknown keys {sorted(unknown)}")
            rows.append(
                Row(
                    prompt,
                    {str(k): float(v) for k, v in scores.items()},
                    str(doc.get("category", "")),
                    {str(k): float(v) for k, v in (doc.get("costs") or {}).items()},
                )
            )
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def write_rows(rows: Iterable[Row], path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(row.to_json() + "\n")
            n += 1
    return n


def data_hash(rows: list[Row]) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(row.to_json().encode())
        h.update(b"\n")
    return h.hexdigest()


def half(prompt: str) -> str:
    """The deterministic 50/50 split: "calibrate" or "eval", by a hash of the prompt."""
    return "calibrate" if hashlib.sha256(prompt.encode()).digest()[0] < 128 else "eval"


def split(rows: list[Row], which: str) -> list[Row]:
    if which == "all":
        return rows
    return [r for r in rows if half(r.prompt) == which]


# --- RouteLLM's evaluation files (lm-sys/RouteLLM, routellm/evals/) ---


def _contaminated(folder: Path) -> set[str]:
    path = folder / "contaminated_prompts.jsonl"
    if not path.exists():
        return set()
    with path.open(encoding="utf-8") as f:
        return {json.loads(line)["eval_prompt"] for line in f if line.strip()}


def _correct(value: str, where: str) -> float:
    if value not in ("True", "False"):
        raise DataError(f"{where}: expected True or False, got {value!r}")
    return 1.0 if value == "True" else 0.0


def convert_mmlu(folder: Path) -> Iterator[Row]:
    """mmlu/responses/mmlu_<subject>.csv: prompt, then True/False per model."""
    dropped = _contaminated(folder)
    files = sorted((folder / "responses").glob("mmlu_*.csv"))
    if not files:
        raise DataError(f"{folder}/responses: no mmlu_*.csv files")
    for path in files:
        subject = path.stem.removeprefix("mmlu_")
        with path.open(encoding="utf-8", newline="") as f:
            for number, rec in enumerate(csv.DictReader(f), 2):
                if rec["prompt"] in dropped:
                    continue
                where = f"{path}:{number}"
                yield Row(
                    rec["prompt"],
                    {m: _correct(rec[m], where) for m in (STRONG, WEAK)},
                    subject,
                )


def convert_gsm8k(folder: Path) -> Iterator[Row]:
    """gsm8k/gsm8k_responses.csv: prompt, True/False per model, each model's response."""
    dropped = _contaminated(folder)
    path = folder / "gsm8k_responses.csv"
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8", newline="") as f:
        for number, rec in enumerate(csv.DictReader(f), 2):
            if rec["prompt"] in dropped:
                continue
            where = f"{path}:{number}"
            yield Row(rec["prompt"], {m: _correct(rec[m], where) for m in (STRONG, WEAK)}, "math")


def convert_mt_bench(folder: Path) -> Iterator[Row]:
    """mt_bench/question.jsonl + judgements.jsonl: each model's mean 1-10 judge score over a
    question's two turns; routed on the first turn, as RouteLLM does."""
    dropped = _contaminated(folder)
    judged: dict[tuple[int, str], list[float]] = {}
    with (folder / "judgements.jsonl").open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                j = json.loads(line)
                judged.setdefault((j["question_id"], j["model"]), []).append(float(j["score"]))
    with (folder / "question.jsonl").open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            q = json.loads(line)
            if q["turns"][0] in dropped or q["turns"][1] in dropped:
                continue
            scores = {}
            for model in (STRONG, WEAK):
                values = judged.get((q["question_id"], model))
                if not values:
                    raise DataError(f"mt_bench: no judgement of {model} on {q['question_id']}")
                scores[model] = sum(values) / len(values)
            yield Row(q["turns"][0], scores, q["category"])


def convert_everyday(folder: Path) -> Iterator[Row]:
    """data/everyday/prompts.yaml (README there): everyday requests labelled simple or complex,
    as rows of RouteLLM's model pair: the strong model right on every prompt, the weak one on
    the simple prompts only. Its category is the kind of request."""
    import yaml

    path = folder / "prompts.yaml"
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: cannot read it ({exc})") from exc
    if not isinstance(doc, dict) or set(doc) != {"simple", "complex"}:
        raise DataError(f"{path}: expected two mappings, `simple:` and `complex:`, of kinds")
    for level, kinds in doc.items():
        for kind, prompts in (kinds or {}).items():
            for prompt in prompts or []:
                if not isinstance(prompt, str) or not prompt.strip():
                    raise DataError(f"{path}: {level}.{kind}: every prompt must be a string")
                weak = 1.0 if level == "simple" else 0.0
                yield Row(prompt, {STRONG: 1.0, WEAK: weak}, kind)


# RouteLLM's benchmarks, as `make eval` converts them from ../shared/data/routellm.
ROUTELLM_SETS = ("mmlu", "gsm8k", "mt_bench")
CONVERTERS = {
    "mmlu": convert_mmlu,
    "gsm8k": convert_gsm8k,
    "mt_bench": convert_mt_bench,
    "everyday": convert_everyday,
}
