"""The int8 kNN search against the exact one, on the shipped artifact and real embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from tests.helpers.services import EMBEDDER_DIR, PROMPTS, ROOT
from tierroute.quality.artifact import exact_search, load_artifact, raw_scores
from tierroute.router.scoring.embedder import Embedder
from tierroute.router.scoring.learned import LearnedScorer
from tierroute.router.scoring.neighbours import Int8Search

ARTIFACT = ROOT / "artifacts" / "router-default"


@pytest.fixture(scope="module")
def embedded() -> tuple[list[str], np.ndarray, Embedder]:
    everyday = yaml.safe_load((ROOT / "data" / "everyday" / "prompts.yaml").read_text())
    texts = PROMPTS["simple"] + PROMPTS["complex"]
    texts += [t for level in everyday.values() for kind in level.values() for t in kind]
    embedder = Embedder(EMBEDDER_DIR)
    return texts, embedder.embed(texts), embedder


def test_the_int8_search_finds_the_exact_nearest_neighbours(
    embedded: tuple[list[str], np.ndarray, Embedder],
) -> None:
    texts, vectors, _ = embedded
    _, arrays = load_artifact(ARTIFACT)
    neighbours = arrays["base_neighbours"]
    search = Int8Search()
    assert search.prepare(neighbours)
    k = 100
    exact = exact_search(neighbours, vectors, k)
    for batch in (1, 32):  # one prompt per call, as a lone request; and a batch's worth
        found = np.concatenate(
            [search(neighbours, vectors[i : i + batch], k) for i in range(0, len(texts), batch)]
        )
        same = [set(a) == set(b) for a, b in zip(found, exact, strict=True)]
        assert np.mean(same) >= 0.98, f"{np.mean(same):.1%} of {len(texts)} prompts"
        # what differs is a near tie at the k-th place: the k-th similarity within 0.01
        for i in np.flatnonzero(~np.array(same)):
            sims = neighbours @ vectors[i]
            assert sims[found[i]].min() >= np.sort(sims)[-k] - 0.01


def test_the_served_scores_match_the_exact_search(
    embedded: tuple[list[str], np.ndarray, Embedder],
) -> None:
    texts, vectors, embedder = embedded
    meta, arrays = load_artifact(ARTIFACT)
    scorer = LearnedScorer(ARTIFACT, 5.0, embedder.version)
    served = np.array([s.value for s in scorer.score(vectors, texts)])
    raw = raw_scores(meta["model"], arrays, meta.get("params", {}), vectors, texts)
    exact = np.interp(raw, [meta["raw_low"], meta["threshold"], meta["raw_high"]], [0, 5, 10])
    np.testing.assert_allclose(served, exact, atol=0.05)
    assert np.mean((served > 5.0) == (exact > 5.0)) >= 0.99


def test_a_matrix_too_small_to_pay_is_searched_exactly() -> None:
    rng = np.random.default_rng(0)
    small = rng.standard_normal((50, 8)).astype(np.float32)
    small /= np.linalg.norm(small, axis=1, keepdims=True)
    search = Int8Search()
    assert not search.prepare(small)
    query = small[:3]
    np.testing.assert_array_equal(
        np.sort(search(small, query, 5), axis=1), np.sort(exact_search(small, query, 5), axis=1)
    )
