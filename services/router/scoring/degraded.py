"""The degraded embedder: what scores a prompt when the real embedder cannot in time.

The real embedder runs a 6-layer transformer per prompt (2-3 ms on an idle core, tens of ms
when vLLM engines share the CPU). This one looks each of the prompt's word pieces up in a
table, averages the rows and normalises: about 0.1 ms for a short prompt, on the event loop,
with no queue. It approximates the real embedding, so the same scorer reads it:

- the table (`static-tokens.npy` in the embedder's folder, `make models`) holds, per word
  piece, the real embedder's output for "[CLS] piece [SEP]";
- a linear map fitted on labelled prompts' real embeddings (`artifacts/degraded-default`,
  `python -m tierroute.tools.modelbuild --only degraded`) turns the centred mean of a prompt's
  rows into an approximation of its real embedding. The map is folded into the table at load.

On the held-out halves of RouteLLM's MMLU and GSM8K and of the everyday set, the router's
decision from the degraded embedding agrees with the real one on 92-99.5% of prompts
(README, "Under contention").
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from tierroute.quality.artifact import ArtifactError

logger = logging.getLogger(__name__)

TABLE_FILE = "static-tokens.npy"
MAP_FILE = "map.npz"
META_FILE = "meta.json"


class DegradedEmbedder:
    """Unit-length approximate embeddings from per-word-piece rows; thread-safe (read-only)."""

    def __init__(self, folder: Path, embedder_dir: Path, embedder_version: str, max_tokens: int):
        meta_path, map_path = folder / META_FILE, folder / MAP_FILE
        table_path = embedder_dir / TABLE_FILE
        for path in (meta_path, map_path):
            if not path.is_file():
                raise ArtifactError(
                    f"{path} is missing: router.degraded_scorer must name a folder written by "
                    "`python -m tierroute.tools.modelbuild --only degraded`"
                )
        if not table_path.is_file():
            raise ArtifactError(f"{table_path} is missing: run `make models`")
        meta = json.loads(meta_path.read_text())
        if meta.get("embedder_version") != embedder_version:
            raise ArtifactError(
                f"{folder} was fitted for embedder {meta.get('embedder_version')}, the router "
                f"runs {embedder_version}: refit it (`python -m tierroute.tools.modelbuild "
                "--only degraded`) or unset router.degraded_scorer"
            )
        with np.load(map_path) as arrays:
            mean, weights = arrays["mean"], arrays["weights"]
        table = np.load(table_path).astype(np.float32)
        # centred rows through the map, once: a prompt is then a gather and a mean
        self._table = ((table - mean) @ weights).astype(np.float32)
        self._tokenizer = Tokenizer.from_file(str(embedder_dir / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_tokens)
        self.version = f"degraded@{meta['version']}"
        self.meta = meta
        logger.info("degraded embedder %s loaded (%d word pieces)", self.version, len(table))

    def embed(self, text: str) -> tuple[np.ndarray, bool]:
        """The approximate embedding of `text` and whether it was truncated."""
        encoding = self._tokenizer.encode(text)
        vector = self._table[encoding.ids].mean(axis=0)
        norm = float(np.linalg.norm(vector))
        return (vector / max(norm, 1e-12)).astype(np.float32), bool(encoding.overflowing)


def mean_rows(table: np.ndarray, tokenizer: Tokenizer, texts: list[str]) -> np.ndarray:
    """Each text's mean table row (before the map): what the map is fitted on."""
    out = np.empty((len(texts), table.shape[1]), dtype=np.float32)
    for i, encoding in enumerate(tokenizer.encode_batch(texts)):
        out[i] = table[encoding.ids].mean(axis=0)
    return out
