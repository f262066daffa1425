"""The router artifact: its format and its arithmetic, shared by the router (which serves it
with numpy, no scikit-learn) and the quality tooling (`tierroute calibrate` writes it,
`tierroute eval` runs it).

An artifact is a folder: `router.json` (what model, which threshold, the embedder it was fitted
on, the data hash, the metrics) and one `.npy` file per array. Every model kind computes a raw
score from the unit-length embeddings of what each prompt asks (`requests`: a pasted text and
the question about it are told apart by tierroute.core.asked, and only the question is
embedded), where higher means "the large tier is needed":

- `logistic`: the expected gain P(large better) - P(large worse) from a regularised
  multinomial logistic regression over the embedding and a few standardised features of the
  text that a mean-pooled embedding does not keep (its numbers, negations like NOT/EXCEPT,
  math symbols; how much text it quotes and of what kind, never its length): see
  `prompt_features`;
- `knn`: the mean gain (large minus small quality) of the k most similar labelled prompts;
- `ensemble`: a weighted mean of the logistic and the knn score, each first turned into its
  rank among the calibration prompts' scores (a stored quantile table);
- `centroid`: cos(e, large-needed centroid) - cos(e, small-is-enough centroid);
- `anchors`: like the seed scorer, over anchor prompts chosen from the data;
- `stacked`: a benchmark-fitted scorer (`base_*` arrays, usually an ensemble) plus a
  logistic model of general traffic (`general_*`: everyday requests labelled simple or
  complex), each standardised by its mean and spread over the benchmark's calibration
  prompts, the first multiplied by a gate g (`domain_*`: a logistic model of how much the
  prompt is like the benchmark rows rather than the everyday ones, 0-1), the second weighted
  by `general_weight` x (1 - `general_gate_share` x g), and the everyday side shifted by
  (1 - g) x `general_offset`, so that one threshold meets the target on both kinds of
  traffic. The first ranks questions within a benchmark; the second tells a greeting from a
  proof, which exam data never shows it; the gate keeps each to what it knows;
- `blend`: a scorer calibrated on the user's rows (`own_*`) shrunk toward a prior artifact
  (`prior_*`, any kind): each standardised over the calibration rows, mixed with the prior's
  share `prior_share` chosen by k-fold cross-validation (`tierroute calibrate --prior`).

The raw score maps piecewise-linearly onto 0-10 so that the artifact's threshold lands on
`router.complexity_threshold`: the router's tier choice is then exactly the artifact's.
`raw_scores` is also what `tierroute eval` runs, so what is evaluated is what is served. (The
router may pass its own `search` for a kNN's nearest neighbours, one that finds the same ones
faster: services/router/scoring/neighbours.py.)
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tierroute.core.asked import CONTEXT_KINDS, asked

# 2: embeddings and features of what a prompt asks (tierroute.core.asked), not of its bulk;
# format 1 artifacts embedded the whole prompt and read its length, and are refused.
ARTIFACT_FORMAT = 2
MODEL_KINDS = ("logistic", "knn", "ensemble", "centroid", "anchors", "stacked", "blend")
# Of the request: its numbers, negations, math symbols, capitals; never its length (length is
# not difficulty). Of the context set aside: how much, and of what kind.
FEATURES = (
    "log_request_words",
    "log_numbers",
    "log_largest_number",
    "mean_word_length",
    "negation",
    "statement_pair",
    "log_math_symbols",
    "capitals_share",
    "log_context_words",
    *(f"context_{kind}" for kind in CONTEXT_KINDS),
    "lookup_form",
    "reasoning_cue",
)
# A short request that opens with one of these asks for one fact (a lookup); any of the cues
# asks for reasoning. The question's form, which an embedding of its topic barely keeps.
_LOOKUP = re.compile(
    r"^\W*(?:what|which|who|whom|whose|when|where|how (?:many|much|long|old)|is|are|does|do|did"
    r"|qu[eé]|cu[aá]l|cu[aá]nt[oa]s?|qui|quel(?:le)?s?|o[uù]|combien|wer|wie viele?|welche[rs]?"
    r"|wann|wo)\b",
    re.I,
)
_REASONING = re.compile(
    r"\b(?:why|explain|assess|analy[sz]e|design|propose|compare|evaluate|recommend|justify"
    r"|prove|derive|plan|should|trade-?offs?|risks?|diagnos\w*|critique|review|strateg\w*"
    r"|por qu[eé]|warum|pourquoi|analiza|analysiere|analyse|beweise|d[eé]montre|demuestra)\b"
    r"|为什么|分析|设计|证明|なぜ|分析|設計|証明",
    re.I,
)
LOOKUP_WORDS = 15
# How much context the features tell apart: more than this reads as this much (a longer text
# pasted before the same question asks no more of the tier).
CONTEXT_WORDS_SEEN = 150
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_NEGATION = re.compile(r"\b(?:NOT|EXCEPT|LEAST)\b")
_MATH = re.compile(r"[=+*/^<>]")
QUANTILES = np.linspace(0.0, 1.0, 101)


class ArtifactError(ValueError):
    """An artifact that cannot be served; the message says what to do."""


class RecordedTexts(list[str]):
    """Prompts known by a key and their recorded `prompt_features` rather than their text (a
    routing log that does not keep prompts): `prompt_features` gives the recorded rows back."""

    def __init__(self, keys: Sequence[str], features: np.ndarray) -> None:
        super().__init__(keys)
        if len(features) != len(keys):
            raise ValueError(f"{len(keys)} prompts but {len(features)} rows of features")
        self.features = np.asarray(features, dtype=np.float32)

    def take(self, keep: np.ndarray) -> RecordedTexts:
        return RecordedTexts([self[i] for i in keep], self.features[keep])


def prompt_features(texts: Sequence[str]) -> np.ndarray:
    """Features of the (whitespace-folded) prompt text that a mean-pooled embedding loses."""
    if isinstance(texts, RecordedTexts):
        return texts.features
    rows = []
    for text in texts:
        ask = asked(text)
        request = ask.request
        numbers = _NUMBER.findall(request)
        words = request.split()
        largest = max((float(n) for n in numbers), default=0.0)
        letters = sum(c.isalpha() for c in request)
        rows.append(
            [
                np.log1p(len(words)),
                np.log1p(len(numbers)),
                np.log1p(min(largest, 1e12)),
                min(sum(map(len, words)) / len(words), 30.0) if words else 0.0,
                float(bool(_NEGATION.search(request))),
                float("Statement 1" in request),
                np.log1p(len(_MATH.findall(request))),
                sum(c.isupper() for c in request) / letters if letters else 0.0,
                np.log1p(min(ask.context_words, CONTEXT_WORDS_SEEN)),
                *(float(ask.kind == kind) for kind in CONTEXT_KINDS),
                float(len(words) <= LOOKUP_WORDS and bool(_LOOKUP.match(request))),
                float(bool(_REASONING.search(request))),
            ]
        )
    return np.array(rows, dtype=np.float32).reshape(len(texts), len(FEATURES))


def requests(texts: Sequence[str]) -> list[str]:
    """What is embedded of each prompt: what it asks (tierroute.core.asked)."""
    return [asked(text).request for text in texts]


def logistic_inputs(
    arrays: dict[str, np.ndarray], e: np.ndarray, texts: Sequence[str]
) -> np.ndarray:
    f = (prompt_features(texts) - arrays["feature_mean"]) / arrays["feature_std"]
    return np.hstack([e, f.astype(np.float32)])


# The rows of `neighbours` most similar to each unit-length query: (neighbours, queries, k)
# -> indices, one row of k per query, in no particular order.
Search = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def exact_search(neighbours: np.ndarray, e: np.ndarray, k: int) -> np.ndarray:
    sims = e @ neighbours.T
    return np.argpartition(-sims, k - 1, axis=1)[:, :k]


def _knn(arrays: dict[str, np.ndarray], k: int, e: np.ndarray, search: Search) -> np.ndarray:
    neighbours = arrays["neighbours"]
    top = search(neighbours, e, min(k, len(neighbours)))
    return np.asarray(arrays["labels"][top].mean(axis=1))


def expected_gain(
    arrays: dict[str, np.ndarray], params: dict[str, Any], x: np.ndarray
) -> np.ndarray:
    """P(the large model does better) - P(it does worse), from a multinomial logistic model
    over the sign of the gain."""
    logits = x @ arrays["weights"].T + arrays["bias"]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    classes = list(params["classes"])
    score = p[:, classes.index(1)] if 1 in classes else np.zeros(len(x))
    if -1 in classes:
        score = score - p[:, classes.index(-1)]
    return np.asarray(score)


def general_scores(
    arrays: dict[str, np.ndarray],
    params: dict[str, Any],
    e: np.ndarray,
    texts: Sequence[str],
    search: Search = exact_search,
) -> np.ndarray:
    """A stacked scorer's everyday model: its logistic model's expected gain, mixed with the
    mean label of the `k` most similar everyday requests (`knn_share` of it; none in an
    artifact without one)."""
    logit = expected_gain(arrays, params, logistic_inputs(arrays, e, texts))
    share = float(params.get("knn_share", 0.0))
    if not share:
        return logit
    return np.asarray((1 - share) * logit + share * _knn(arrays, int(params["k"]), e, search))


def gate(
    arrays: dict[str, np.ndarray], params: dict[str, Any], e: np.ndarray, texts: Sequence[str]
) -> np.ndarray:
    """A stacked scorer's gate, 0-1: how much each prompt is like the benchmark rows (1)
    rather than everyday requests (0), from its logistic model over the same inputs."""
    return np.asarray((expected_gain(arrays, params, logistic_inputs(arrays, e, texts)) + 1) / 2)


def raw_scores(
    model: str,
    arrays: dict[str, np.ndarray],
    params: dict[str, Any],
    e: np.ndarray,
    texts: Sequence[str],
    search: Search = exact_search,
) -> np.ndarray:
    """Raw scores (higher: the large tier is needed) for unit-length embeddings `e` of the
    whitespace-folded `texts`; a kNN's neighbours found by `search`."""
    e = np.asarray(e, dtype=np.float32)
    if model == "blend":
        own = raw_scores(
            params["own_model"], part(arrays, "own_"), params["own_params"], e, texts, search
        )
        prior = raw_scores(
            params["prior_model"], part(arrays, "prior_"), params["prior_params"], e, texts, search
        )
        share = params["prior_share"]
        return np.asarray(
            (1 - share) * (own - params["own_mean"]) / params["own_std"]
            + share * (prior - params["prior_mean"]) / params["prior_std"]
        )
    if model == "stacked":
        base = raw_scores(
            params["base_model"], part(arrays, "base_"), params["base_params"], e, texts, search
        )
        general = general_scores(part(arrays, "general_"), params["general_params"], e, texts)
        g = gate(part(arrays, "domain_"), params["domain_params"], e, texts)
        w = params["general_weight"] * (1 - params["general_gate_share"] * g)
        return np.asarray(
            g * (base - params["base_mean"]) / params["base_std"]
            + w * (general - params["general_mean"]) / params["general_std"]
            + (1 - g) * params["general_offset"]
        )
    if model in ("logistic", "ensemble"):
        logit = expected_gain(arrays, params, logistic_inputs(arrays, e, texts))
        if model == "logistic":
            return logit
        knn = _knn(arrays, int(params["k"]), e, search)
        weight = float(params["knn_weight"])
        return np.asarray(
            (1.0 - weight) * np.interp(logit, arrays["logistic_quantiles"], QUANTILES)
            + weight * np.interp(knn, arrays["knn_quantiles"], QUANTILES)
        )
    if model == "knn":
        return _knn(arrays, int(params["k"]), e, search)
    if model == "centroid":
        return np.asarray(e @ arrays["large_centroid"] - e @ arrays["small_centroid"])
    if model == "anchors":
        high = np.clip((e @ arrays["large_anchors"].T).max(axis=1), 0.0, None)
        low = np.clip((e @ arrays["small_anchors"].T).max(axis=1), 0.0, None)
        return np.asarray(high / (low + high + 0.01))
    raise ArtifactError(f"unknown model kind {model!r} (known: {', '.join(MODEL_KINDS)})")


def part(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays of one component of a stacked artifact, without their prefix."""
    return {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}


def artifact_version(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    """A content hash of the artifact: metadata (less its own version) and every array."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in meta.items() if k != "version"}, sort_keys=True).encode())
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()[:12]


def save_artifact(folder: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    """Write the artifact; the same inputs give the same bytes. Returns its version. The folder
    is written beside its place and swapped in whole: a failed write leaves the old one."""
    meta = {**meta, "format": ARTIFACT_FORMAT, "arrays": sorted(arrays)}
    version = artifact_version(meta, arrays)
    meta["version"] = version
    folder.parent.mkdir(parents=True, exist_ok=True)
    fresh = folder.with_name(f".{folder.name}.writing")
    old = folder.with_name(f".{folder.name}.old")
    for leftover in (fresh, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    fresh.mkdir()
    try:
        for name, array in arrays.items():
            np.save(fresh / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        (fresh / "router.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        # Other files in the folder (a README) are the user's: they stay.
        if folder.is_dir():
            for kept in folder.iterdir():
                if kept.is_file() and kept.suffix != ".npy" and kept.name != "router.json":
                    shutil.copy2(kept, fresh / kept.name)
            folder.rename(old)
        fresh.rename(folder)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        if old.exists() and not folder.exists():
            old.rename(folder)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return version


def load_artifact(folder: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    meta_path = folder / "router.json"
    if not meta_path.is_file():
        raise ArtifactError(
            f"{meta_path} is missing: run `make models` (or `tierroute calibrate`) to build it"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(
            f"{meta_path}: format {meta.get('format')!r}, this router reads {ARTIFACT_FORMAT}; "
            "recalibrate with this version"
        )
    arrays = {n: np.load(folder / f"{n}.npy", allow_pickle=False) for n in meta["arrays"]}
    if artifact_version(meta, arrays) != meta.get("version"):
        raise ArtifactError(f"{folder}: contents do not match version {meta.get('version')!r}")
    return meta, arrays
