"""The int8 ONNX embedder against its fp32 export, and a batch's (lack of) effect on its output."""

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


def test_a_prompts_embedding_is_the_same_alone_and_among_others(
    int8: Embedder, prompts: dict[str, list[str]]
) -> None:
    # Dynamic int8 quantization picks one activation scale per ONNX run: run together, a
    # batch's prompts would nudge each other's embeddings (and scores, and the routing log's
    # labels). Each prompt runs alone, on whichever session and thread.
    long = "The shipment left the depot at noon and arrived late. " * 60 + "When did it leave?"
    texts = prompts["simple"] + prompts["complex"] + [long]
    alone = np.concatenate([int8.embed([t]) for t in texts])
    # Two threads: a batch runs side by side on the one-thread session, a lone text on both.
    two = Embedder(EMBEDDER_DIR, intra_op_threads=2)
    batched, truncated = two.embed_with_truncation(texts)
    assert np.array_equal(batched, alone)
    assert truncated == [False] * (len(texts) - 1) + [True]
    assert np.array_equal(two.embed(texts[::-1])[::-1], alone)
    assert np.array_equal(np.concatenate([two.embed([t]) for t in texts]), alone)
    # One thread: the batch runs one text after another on the one session.
    assert np.array_equal(Embedder(EMBEDDER_DIR, intra_op_threads=1).embed(texts), alone)


def test_truncation_is_reported(int8: Embedder) -> None:
    small = Embedder(EMBEDDER_DIR, max_tokens=16)
    _, truncated = small.embed_with_truncation(["short", "word " * 40])
    assert truncated == [False, True]


def test_missing_model_says_to_run_make_models(tmp_path) -> None:
    with pytest.raises(EmbedderNotBuiltError, match="make models"):
        Embedder(tmp_path)
