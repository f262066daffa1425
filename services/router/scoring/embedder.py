"""The router's text embedder: int8 all-MiniLM-L6-v2 on onnxruntime's CPU provider.

Only onnxruntime, tokenizers and numpy are imported here: the router process never loads torch.
The ONNX graph (built by `make models`) does mean pooling and L2 normalisation itself, so a run
returns unit-length sentence embeddings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

logger = logging.getLogger(__name__)


class EmbedderNotBuiltError(FileNotFoundError):
    """The embedder's files are missing: `make models` has not been run."""


@dataclass(frozen=True)
class Encoded:
    """Tokenized texts, padded to the longest, ready for an ONNX run."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    truncated: list[bool]


class Embedder:
    """Embeds texts into unit vectors, each text in an ONNX run of its own.

    The int8 model quantizes its activations with one scale per run (dynamic quantization), so
    texts run together would nudge each other's embeddings (cosine 0.98-0.99 measured): a
    prompt's score, and the routing log's labels, would depend on what else was in flight, and
    differ from the single-text embeddings the artifacts are fitted on. So a batch's texts run
    side by side, one per thread (`threads`, one per core by default) on a one-thread session,
    which is also faster than one padded run on this model (1.5 against 2.1 ms a prompt for 32
    short prompts on 2 cores); a lone text runs on every thread of its own session. Both
    sessions give the same numbers (integer matrix products; tested).
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        max_tokens: int = 256,
        intra_op_threads: int = 0,
        spinning: bool = False,
        model_file: str = "model.onnx",
    ) -> None:
        model_path = model_dir / model_file
        tokenizer_path = model_dir / "tokenizer.json"
        for p in (model_path, tokenizer_path):
            if not p.is_file():
                raise EmbedderNotBuiltError(f"embedder file {p} is missing: run `make models`")
        self.max_tokens = max_tokens
        self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_tokens)
        self.threads = intra_op_threads or os.cpu_count() or 1
        self._session = self._open(model_path, intra_op_threads, spinning)
        self._side_by_side = None
        self._pool = None
        if self.threads > 1:
            self._side_by_side = self._open(model_path, 1, spinning)
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="embed")
        self._input_names = {i.name for i in self._session.get_inputs()}
        self.dimension = int(self._session.get_outputs()[0].shape[-1])
        self.version = self._version(model_dir, model_path, tokenizer_path, max_tokens)
        logger.info("embedder %s loaded from %s", self.version, model_path)

    @staticmethod
    def _open(model_path: Path, threads: int, spinning: bool) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # ORT's worker threads otherwise spin on the CPU for a while after each run, taking
        # it from whatever runs beside the router (a vLLM engine on the same box, say).
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if spinning else "0"
        )
        return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

    @staticmethod
    def _version(model_dir: Path, model_path: Path, tokenizer_path: Path, max_tokens: int) -> str:
        """Names everything that shapes an embedding: the weights, the tokenizer and how much
        of a prompt is read."""
        manifest = model_dir / "manifest.json"
        digest = hashlib.sha256(f"max_tokens={max_tokens}".encode())
        if manifest.is_file() and model_path.name == "model.onnx":
            meta = json.loads(manifest.read_text())
            digest.update(str(meta.get("model_sha256", "")).encode())
            digest.update(json.dumps(meta.get("source", {}), sort_keys=True).encode())
        else:
            digest.update(model_path.read_bytes())
            digest.update(tokenizer_path.read_bytes())
        return f"{model_dir.name}/{model_path.stem}@{digest.hexdigest()[:12]}"

    def encode(self, texts: list[str]) -> Encoded:
        encodings = self._tokenizer.encode_batch(texts)
        longest = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), longest), dtype=np.int64)
        mask = np.zeros((len(texts), longest), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        truncated = [bool(e.overflowing) for e in encodings]
        return Encoded(ids, mask, truncated)

    def run(self, encoded: Encoded, session: ort.InferenceSession | None = None) -> np.ndarray:
        feeds = {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(encoded.input_ids)
        (out,) = (session or self._session).run(["embedding"], feeds)
        return np.asarray(out, dtype=np.float32)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length embeddings, one row per text."""
        return self.embed_with_truncation(texts)[0]

    def embed_with_truncation(self, texts: list[str]) -> tuple[np.ndarray, list[bool]]:
        """Embeddings and, per text, whether it was cut to `max_tokens` for embedding. Each
        text's embedding is the one it gets alone, whatever else is in `texts`."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32), []
        if len(texts) == 1 or self._pool is None:
            done = [self._alone(t, self._session) for t in texts]
        else:
            side_by_side = self._side_by_side
            done = list(self._pool.map(lambda t: self._alone(t, side_by_side), texts))
        return np.concatenate([v for v, _ in done]), [t for _, t in done]

    def _alone(self, text: str, session: ort.InferenceSession | None) -> tuple[np.ndarray, bool]:
        encoded = self.encode([text])
        return self.run(encoded, session), encoded.truncated[0]
