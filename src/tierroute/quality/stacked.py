"""The stacked scorer: the benchmark ensemble, a model of everyday requests (simple or complex)
that never sees a request's length, and a gate that weighs the two by how benchmark-like a
prompt is. Its weights are chosen by cross-validation on the calibration rows only."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from tierroute.quality import apgr
from tierroute.quality.artifact import (
    expected_gain,
    gate,
    general_scores,
    logistic_inputs,
    raw_scores,
)
from tierroute.quality.fitting import (
    LENGTH_FEATURES,
    Labelled,
    auc,
    fit,
    fit_knn,
    fit_logistic,
    joined,
    out_of_fold,
    threshold_for,
    two_folds,
)

logger = logging.getLogger(__name__)


# A stacked scorer's general-traffic model: its regularisation and its weight are chosen by
# cross-validation on the calibration rows: the least weight that tells simple from complex
# everyday requests with GOAL_AUC, so that the benchmark ranking loses the least.
GENERAL_C = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


GENERAL_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


GOAL_AUC = 0.95


# The gate's regularisation (a stacked scorer's benchmark-or-everyday model), and how much of
# the general model's weight it may take away on benchmark-like prompts.
DOMAIN_C = 1.0


# The everyday model's kNN: neighbours, and the shares of its score it may take.
GENERAL_K = 10


GENERAL_KNN_SHARES = (0.0, 0.25, 0.5)


GATE_SHARES = (0.0, 0.5, 0.9, 1.0)


@dataclass(frozen=True)
class Stack:
    """What a stacked scorer is made of, and the cross-validated figures it was chosen on."""

    arrays: dict[str, np.ndarray]
    params: dict[str, Any]
    oof: np.ndarray  # each calibration prompt's score from components that did not see it
    general_oof: np.ndarray  # the same for the general rows
    chosen_on: dict[str, Any]


def fit_stacked(
    data: Labelled,
    general: Labelled,
    weight: float | None = None,
    target: dict[str, float] | None = None,
) -> Stack:
    """A stacked scorer: an ensemble fitted on `data` (benchmark rows) plus a logistic model
    fitted on `general` (everyday rows labelled simple or complex). The general model's
    regularisation is chosen by 2-fold AUC on `general`; the weight (unless given) is the
    smallest that reaches GOAL_AUC on out-of-fold scores of `general` (each weight costs the
    benchmark ranking a little: the table of both is kept), else the one with the best AUC."""
    complex_ = general.gain > 0
    folds = two_folds(general)
    # Out of fold, per C: the general model's scores on its own rows, from the fold models.
    oof_by_c = {}
    for c in GENERAL_C:
        oof = np.zeros(len(general.rows))
        for f in (0, 1):
            arrays, params = fit_logistic(general.subset(folds != f), c, blind=LENGTH_FEATURES)
            test = general.subset(folds == f)
            oof[folds == f] = expected_gain(
                arrays, params, logistic_inputs(arrays, test.embeddings, test.texts)
            )
        oof_by_c[c] = oof
    c_auc = {c: auc(oof, complex_) for c, oof in oof_by_c.items()}
    c = max(GENERAL_C, key=lambda v: (c_auc[v], -v))
    general_arrays, general_params = fit_logistic(general, c, blind=LENGTH_FEATURES)
    # ... mixed with the labels of the most similar everyday requests (a kNN over what they
    # ask): a lookup question over a pasted text resembles the lookups more than its words
    # alone say. Its share is chosen by the same 2-fold AUC.
    knn_oof = np.zeros(len(general.rows))
    for f in (0, 1):
        test = general.subset(folds == f)
        knn_oof[folds == f] = raw_scores(
            "knn", fit_knn(general.subset(folds != f)), {"k": GENERAL_K}, test.embeddings,
            test.texts,
        )  # fmt: skip
    mixes = {a: (1 - a) * oof_by_c[c] + a * knn_oof for a in GENERAL_KNN_SHARES}
    mix_auc = {a: auc(oof, complex_) for a, oof in mixes.items()}
    knn_share = max(GENERAL_KNN_SHARES, key=lambda a: (mix_auc[a], -a))
    general_arrays |= {k: v for k, v in fit_knn(general).items()}
    general_params |= {"k": GENERAL_K, "knn_share": knn_share}
    general_oof = mixes[knn_share]
    base_arrays, base_params = fit("ensemble", data)
    base_oof = out_of_fold("ensemble", data)

    def general_score(rows: Labelled) -> np.ndarray:
        return general_scores(general_arrays, general_params, rows.embeddings, rows.texts)

    general_on_data = general_score(data)  # never fitted on these rows
    base_on_general = raw_scores(
        "ensemble", base_arrays, base_params, general.embeddings, general.texts
    )
    # The gate: how much a prompt is like the benchmark rows rather than the everyday ones.
    # The benchmark-fitted scorer speaks for prompts like its data; on a pasted log, a line of
    # code or a greeting its score is noise, which the gate keeps out.
    domain = _domain(data, general)
    domain_arrays, domain_params = fit_logistic(
        domain, DOMAIN_C, balanced=True, blind=LENGTH_FEATURES
    )
    domain_folds = two_folds(domain, b"domain:")
    gate_oof = np.zeros(len(domain.rows))
    for f in (0, 1):
        arrays, params = fit_logistic(
            domain.subset(domain_folds != f), DOMAIN_C, balanced=True, blind=LENGTH_FEATURES
        )
        test = domain.subset(domain_folds == f)
        gate_oof[domain_folds == f] = gate(arrays, params, test.embeddings, test.texts)
    gate_data, gate_general = gate_oof[: len(data.rows)], gate_oof[len(data.rows) :]
    stats = {
        "base_mean": float(base_oof.mean()),
        "base_std": float(base_oof.std() + 1e-9),
        "general_mean": float(general_on_data.mean()),
        "general_std": float(general_on_data.std() + 1e-9),
    }

    def combine(
        base: np.ndarray, gen: np.ndarray, g: np.ndarray, wk: tuple[float, float]
    ) -> np.ndarray:
        w, k = wk
        return (
            g * (base - stats["base_mean"]) / stats["base_std"]
            + w * (1 - k * g) * (gen - stats["general_mean"]) / stats["general_std"]
        )

    # The general model's weight w, and how much the gate takes it away on benchmark-like
    # prompts (k): the pair that reaches GOAL_AUC with the least cost to the benchmark
    # ranking, else the best AUC.
    table = {}
    grid = [(w, k) for w in GENERAL_WEIGHTS for k in GATE_SHARES]
    for wk in grid if weight is None else [(weight, 0.0)]:
        a = auc(combine(base_on_general, general_oof, gate_general, wk), complex_)
        oof = combine(base_oof, general_on_data, gate_data, wk)
        table[wk] = {"auc": a, "apgr": apgr.curve(oof, data.large, data.small).apgr}
    reaching = [v for v in table if table[v]["auc"] >= GOAL_AUC]
    wk = (
        max(reaching, key=lambda v: (table[v]["apgr"], -v[0]))
        if reaching
        else max(table, key=lambda v: (table[v]["auc"], -v[0]))
    )
    w, gate_share = wk
    logger.info("stacked: general C %s (AUC %s), weight %s of %s", c, c_auc, wk, table)
    arrays = (
        {f"base_{k}": v for k, v in base_arrays.items()}
        | {f"general_{k}": v for k, v in general_arrays.items()}
        | {f"domain_{k}": v for k, v in domain_arrays.items()}
    )
    params = {
        "base_model": "ensemble",
        "base_params": base_params,
        "general_params": general_params,
        "domain_params": domain_params,
        "general_weight": w,
        "general_gate_share": gate_share,
        **stats,
    }
    chosen_on = {
        "general_rows": len(general.rows),
        "general_c_auc": {str(k): v for k, v in c_auc.items()},
        "general_knn_share_auc": {str(k): v for k, v in mix_auc.items()},
        "weights": {f"{k[0]}, gate share {k[1]}": v for k, v in table.items()},
    }
    chosen_on["gate"] = {
        "benchmark_rows_mean": float(gate_data.mean()),
        "general_rows_mean": float(gate_general.mean()),
    }
    oof = combine(base_oof, general_on_data, gate_data, wk)
    general_oof = combine(base_on_general, general_oof, gate_general, wk)
    # One threshold serves both kinds of traffic: the everyday side (weighted by 1 - g) is
    # shifted so that the threshold meeting `target` on the everyday rows is the benchmark
    # rows' own (without it, the lower of the two would send lookups that need no large
    # model to it, to meet the benchmark's target).
    offset = 0.0
    if target is not None:
        gap = threshold_for(oof, data, target) - threshold_for(general_oof, general, target)
        offset = float(gap / max(float(np.mean(1.0 - gate_general)), 1e-6))
        oof = oof + (1.0 - gate_data) * offset
        general_oof = general_oof + (1.0 - gate_general) * offset
    params["general_offset"] = offset
    return Stack(arrays, params, oof, general_oof, chosen_on)


def _domain(data: Labelled, general: Labelled) -> Labelled:
    """The benchmark and the everyday rows as one set whose gain's sign says which is which
    (+1 benchmark, -1 everyday), for the gate's logistic model."""
    both = joined(data, general)
    n, m = len(data.rows), len(general.rows)
    return Labelled(
        both.rows,
        both.texts,
        both.embeddings,
        np.concatenate([np.ones(n), np.zeros(m)]),
        np.concatenate([np.zeros(n), np.ones(m)]),
    )
