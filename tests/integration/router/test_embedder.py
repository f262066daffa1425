"""The int8 ONNX embedder against its fp32 export, and batching's effect on its output."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.services import EMBEDDER_DIR, router_config
from tierroute.router.scoring.embedder import Embedder, EmbedderNotBuiltError
from tierroute.router.scoring.scorers import ReferenceSet, build_scorer


@pytest.fixture(scope="module")
def int8() -> Embedder:
    return Embedder(EMBEDDER_DIR)


@pytest.fixture(scope="module")
def fp32() -> Embedder:
    return Embedder(EMBEDDER_DIR, model_file="model-fp32.onnx")


def test_embeddings_are_unit_length_and_padding_free(int8: Embedder) -> None:
    vectors = int8.embed(["hi", "a much longer sentence that needs many more tokens than hi"])
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_int8_agrees_with_fp32_on_the_fixed_prompt_set(
    int8: Embedder, fp32: Embedder, prompts: dict[str, list[str]]
) -> None:
    texts = prompts["simple"] + prompts["complex"]
    cosine = (int8.embed(texts) * fp32.embed(texts)).sum(axis=1)
    assert cosine.mean() >= 0.94, f"mean int8-vs-fp32 cosine {cosine.mean():.3f}"
    assert cosine.min() >= 0.75


def test_int8_and_fp32_pick_the_same_tier_at_least_95_percent_of_the_time(
    int8: Embedder, fp32: Embedder, prompts: dict[str, list[str]]
) -> None:
    cfg = router_config()
    refs = ReferenceSet.load()
    # The seed anchor prompts themselves, plus the fixed labelled set.
    texts = [t for _, t in refs.simple + refs.complex] + prompts["simple"] + prompts["complex"]
    tiers = []
    for emb in (int8, fp32):
        scorer = build_scorer(cfg.router, emb.embed, emb.version)
        tiers.append(
            [s.value <= cfg.router.complexity_threshold for s in scorer.score(emb.embed(texts))]
        )
    agreement = np.mean(np.array(tiers[0]) == np.array(tiers[1]))
    assert agreement >= 0.95, f"int8 and fp32 agree on {agreement:.1%} of tiers"


def test_batched_scores_stay_close_to_single_scores(
    int8: Embedder, prompts: dict[str, list[str]]
) -> None:
    # Dynamic int8 quantization picks one activation scale per batch, so a batch's other
    # prompts nudge each score a little. The nudge must stay far below a tier's width.
    cfg = router_config()
    scorer = build_scorer(cfg.router, int8.embed, int8.version)
    texts = prompts["simple"] + prompts["complex"]
    batched = np.array([s.value for s in scorer.score(int8.embed(texts))])
    single = np.array([scorer.score(int8.embed([t]))[0].value for t in texts])
    diff = np.abs(batched - single)
    assert np.median(diff) < 0.2 and diff.max() < 0.6, (np.median(diff), diff.max())
    assert np.array_equal(batched <= 4.0, single <= 4.0)


def test_truncation_is_reported(int8: Embedder) -> None:
    small = Embedder(EMBEDDER_DIR, max_tokens=16)
    _, truncated = small.embed_with_truncation(["short", "word " * 40])
    assert truncated == [False, True]


def test_missing_model_says_to_run_make_models(tmp_path) -> None:
    with pytest.raises(EmbedderNotBuiltError, match="make models"):
        Embedder(tmp_path)
