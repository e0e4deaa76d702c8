"""What an ideal learner could reach on a generated stream: the oracle, the seen-k and
Bayes ceilings, and two honest online Bayesian learners of the per-ID weights
(``experiments/bayes_references.py`` is the flag parser)."""

from __future__ import annotations

import collections
import logging
import time

import numpy as np

from jaxstream.data.synthetic import GridBayesLearner, StreamConfig, SyntheticStream

log = logging.getLogger(__name__)


def learner_references(cfg: StreamConfig, skip_hours: int = 3) -> dict[str, float]:
    """Mean AUC over hours ``skip_hours``+ of the stream's references and of two honest
    online Bayesian learners of the per-ID weights (plug-in :class:`GridBayesLearner`):
    one told the bias and the dense term, one also told the pairwise terms."""
    from sklearn.metrics import roc_auc_score

    stream = SyntheticStream(cfg)
    dense_only = GridBayesLearner(stream.slots, plug_in=True)
    with_pairs = GridBayesLearner(stream.slots, plug_in=True)
    aucs: dict[str, list[float]] = collections.defaultdict(list)
    t0 = time.perf_counter()
    for h in range(cfg.hours):
        part = stream._hour_parts(h)
        known_terms = (part["terms"] * part["known"]).sum(1)
        args = part["idx"], part["present"]
        scores = {
            "oracle": part["logit"],
            "seen_k_ceiling": part["kept"],
            "bayes_ceiling": part["kept"] - known_terms
            + stream._bayes.step(*args, part["id_free_logit"], part["labels"]),
            "plug_in_learner_told_dense": part["dense_logit"]
            + dense_only.step(*args, part["dense_logit"], part["labels"]),
            "plug_in_learner_told_dense_and_pairs": part["id_free_logit"]
            + with_pairs.step(*args, part["id_free_logit"], part["labels"]),
        }  # fmt: skip
        if h >= skip_hours:
            for name, score in scores.items():
                aucs[name].append(roc_auc_score(part["labels"], score))
        log.info("references: hour %d/%d (%.1f s)", h + 1, cfg.hours, time.perf_counter() - t0)
    return {name: float(np.mean(v)) for name, v in aucs.items()}


_REFERENCE_ROWS = (
    ("oracle", "oracle (true probabilities)"),
    ("seen_k_ceiling", "seen-5 ceiling (an ID's exact weight from its 5th sighting on)"),
    ("bayes_ceiling", "Bayes ceiling (exact posterior means, every other term known)"),
    ("plug_in_learner_told_dense_and_pairs",
     "online Bayesian learner told the bias, dense and pairwise terms"),
    ("plug_in_learner_told_dense", "online Bayesian learner told the bias and dense term"),
)  # fmt: skip


def references_markdown(stream: StreamConfig, refs: dict[str, float], skip_hours: int) -> str:
    """The table of :func:`learner_references`."""
    head = (
        f"Stream: {stream.hours} h x {stream.rows_per_hour:,} rows, vocabulary up to "
        f"{stream.max_vocab:,} per slot, Zipf {stream.zipf} (seed {stream.seed}). "
        f"Mean AUC over hours {skip_hours}+. The learners are "
        "`GridBayesLearner(plug_in=True)`: exact posteriors on a grid of each slot's prior, "
        "each label explained with the other IDs' current posterior means."
    )
    rows = [f"| {label} | {refs[key]:.4f} |" for key, label in _REFERENCE_ROWS]
    return "\n".join([head, "", "| reference | AUC |", "|---|---|", *rows])
