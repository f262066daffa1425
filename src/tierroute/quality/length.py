"""Length does not decide: how a router ranks prompts of the same length, and whether pasting
an unrelated text before a simple question moves it to the large tier (`make eval`).

- Length-matched AUC: each complex prompt is paired with the simple prompt closest to it in
  words (within `MATCH_RATIO`, each simple prompt used once); the AUC over the matched prompts
  says whether the router ranks difficulty once length cannot.
- Pasted context: simple questions, alone and after 50, 150, 300 and 500 words of unrelated
  text (data/everyday/filler.yaml); the share each router still sends to the small tier.
- By kind: the share of each kind of request sent to the small tier.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tierroute.quality.fitting import auc

# Two prompts are of about the same length when the shorter has at least this share of the
# longer's words.
MATCH_RATIO = 0.75
PASTED_WORDS = (0, 50, 150, 300, 500)
# The kinds of simple request whose questions the pasted-context test asks.
QUESTION_KINDS = ("factual_lookup", "unit_conversion", "chit_chat")


def matched_pairs(words: np.ndarray, complex_: np.ndarray) -> list[tuple[int, int]]:
    """(complex index, simple index) pairs of about the same length: longest complex prompts
    first, each taking the nearest unused simple prompt within MATCH_RATIO."""
    simple = [i for i in range(len(words)) if not complex_[i]]
    used: set[int] = set()
    pairs = []
    for c in sorted(np.flatnonzero(complex_), key=lambda i: -words[i]):
        best = min(
            (s for s in simple if s not in used),
            key=lambda s: abs(words[s] - words[c]),
            default=None,
        )
        if best is None:
            break
        short, long = sorted((words[best], words[c]))
        if long and short / long >= MATCH_RATIO:
            used.add(best)
            pairs.append((int(c), best))
    return pairs


def length_matched_auc(
    raw: np.ndarray, complex_: np.ndarray, texts: Sequence[str]
) -> dict[str, Any]:
    words = np.array([len(t.split()) for t in texts])
    pairs = matched_pairs(words, complex_)
    keep = np.array([i for pair in pairs for i in pair], dtype=int)
    if len(pairs) < 2:
        return {"pairs": len(pairs), "auc": None}
    return {
        "pairs": len(pairs),
        "auc": auc(raw[keep], complex_[keep]),
        # and the same pairs ranked by length alone: a router that is length in disguise
        # scores about 0.5 here too
        "length_auc": auc(words[keep].astype(float), complex_[keep]),
        "median_words": float(np.median(words[keep])),
    }


def fillers(folder: Path) -> list[str]:
    passages = yaml.safe_load((folder / "filler.yaml").read_text(encoding="utf-8"))
    return [" ".join(p.split()) for p in passages]


def pasted(question: str, words: int, passages: list[str], start: int) -> str:
    """`question` after `words` words of unrelated passages (from passage `start` on, in
    paragraphs), or alone for 0."""
    if words == 0:
        return question
    paragraphs, have, i = [], 0, start
    while have < words:
        passage = passages[i % len(passages)].split()[: words - have]
        paragraphs.append(" ".join(passage))
        have += len(passage)
        i += 1
    return "\n\n".join([*paragraphs, question])


def pasted_context(
    score: Callable[[list[str]], np.ndarray],
    threshold: float,
    questions: list[str],
    passages: list[str],
) -> dict[str, Any]:
    """The share of `questions` the router sends to the small tier (raw score at or below
    `threshold`) alone and after each amount of pasted text."""
    shares = {}
    for n in PASTED_WORDS:
        texts = [pasted(q, n, passages, i) for i, q in enumerate(questions)]
        shares[str(n)] = float(np.mean(score(texts) <= threshold))
    return {"questions": len(questions), "small_share_by_pasted_words": shares}


def by_kind(raw: np.ndarray, threshold: float, kinds: Sequence[str]) -> dict[str, float]:
    """The share of each kind of request sent to the small tier."""
    out = {}
    for kind in sorted(set(kinds)):
        mask = np.array([k == kind for k in kinds])
        out[kind] = float(np.mean(raw[mask] <= threshold))
    return out


def prompts_by_kind(kinds: Sequence[str]) -> dict[str, int]:
    """How many prompts of each kind: a share of 12 moves by 8 points a prompt."""
    return {kind: sum(k == kind for k in kinds) for kind in sorted(set(kinds))}


def wilson(share: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a share observed over `n` trials."""
    if n == 0:
        return (0.0, 1.0)
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))
