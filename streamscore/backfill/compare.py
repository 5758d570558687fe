"""``backfill --compare``: the candidate and the production version on the same events, in one pass.

The candidate is the backfill's model (its predictions are the output); production runs as the
batch's shadow (``ModelStage`` scores it on the same decoded rows and features). Per batch this
keeps both versions' scores and decisions for every row both scored; the report is exact
(quantiles over every difference, not a histogram).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from consumers.work import Work

QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)
NO_LABELS = "no labels: streamscore has no labels topic yet, so the quality of either version is not computed"


class Comparison:
    """Decisions and score differences (candidate - production) of every row both versions scored."""

    def __init__(self, *, production: str, candidate: str) -> None:
        self.production, self.candidate = production, candidate
        self._diffs: list[np.ndarray] = []
        self._cand_pos: list[np.ndarray] = []
        self._prod_pos: list[np.ndarray] = []
        self.not_compared = 0          # rows the candidate scored and production could not

    def add(self, work: Work) -> None:
        rows = work.ok_rows
        if rows is None or len(rows) == 0 or work.scores is None:
            return
        if not work.shadow_out:
            self.not_compared += len(rows)
            return
        assert work.active is not None
        prod_active, prod_scores, prod_fields = work.shadow_out[0]
        cand = np.asarray(work.scores[rows], dtype=np.float64)
        prod = np.asarray(prod_scores, dtype=np.float64)
        self._diffs.append(cand - prod)
        self._cand_pos.append(_decisions(work.fields.get("decision"), rows, cand, work.active.threshold))
        self._prod_pos.append(_decisions(prod_fields.get("decision"), None, prod, prod_active.threshold))

    def report(self) -> dict[str, Any]:
        diff = np.concatenate(self._diffs) if self._diffs else np.zeros(0)
        cand = np.concatenate(self._cand_pos) if self._cand_pos else np.zeros(0, dtype=bool)
        prod = np.concatenate(self._prod_pos) if self._prod_pos else np.zeros(0, dtype=bool)
        n = int(len(diff))
        agree = int(np.count_nonzero(cand == prod))
        out: dict[str, Any] = {
            "production": self.production, "candidate": self.candidate, "compared": n,
            "not_compared": self.not_compared,
            "decisions": {"agree": agree, "agreement": agree / n if n else None,
                          "both_positive": int(np.count_nonzero(cand & prod)),
                          "both_negative": int(np.count_nonzero(~cand & ~prod)),
                          "candidate_only_positive": int(np.count_nonzero(cand & ~prod)),
                          "production_only_positive": int(np.count_nonzero(~cand & prod)),
                          "candidate_positive": int(np.count_nonzero(cand)),
                          "production_positive": int(np.count_nonzero(prod))},
            "score_diff": None, "quality": None, "quality_note": NO_LABELS,
        }
        if n:
            absd = np.abs(diff)
            out["score_diff"] = {
                "of": "candidate - production",
                "mean": float(diff.mean()), "mean_abs": float(absd.mean()), "max_abs": float(absd.max()),
                "quantiles": {f"p{round(q * 100)}": float(v) for q, v in zip(QUANTILES, np.quantile(diff, QUANTILES))},
                "abs_quantiles": {f"p{round(q * 100)}": float(v)
                                  for q, v in zip(QUANTILES, np.quantile(absd, QUANTILES))},
            }
        return out


def _decisions(field: Any, rows: np.ndarray | None, scores: np.ndarray, threshold: float) -> np.ndarray:
    """The version's decision field where it has one (heads may decide otherwise), else score >= threshold."""
    if field is None:
        return scores >= threshold
    values = np.asarray(field) if rows is None else np.asarray(field)[rows]
    return values.astype(bool)


def summary_lines(r: dict[str, Any]) -> list[str]:
    """The comparison as a few human lines (stderr); the JSON holds everything."""
    d = r["decisions"]
    lines = [f"compare {r['candidate']} (candidate) vs {r['production']} (production): {r['compared']:,} events"
             + (f", {r['not_compared']:,} not scored by production" if r["not_compared"] else "")]
    if r["compared"]:
        s = r["score_diff"]
        q = s["quantiles"]
        lines += [f"  decisions agree {d['agreement']:.4%} ({d['agree']:,}); positive: candidate {d['candidate_positive']:,}, "
                  f"production {d['production_positive']:,}; only candidate {d['candidate_only_positive']:,}, "
                  f"only production {d['production_only_positive']:,}",
                  f"  score diff (candidate - production): mean {s['mean']:+.5f}, mean |diff| {s['mean_abs']:.5f}, "
                  f"max |diff| {s['max_abs']:.5f}; p1 {q['p1']:+.5f} p50 {q['p50']:+.5f} p99 {q['p99']:+.5f}"]
    lines.append(f"  {r['quality_note']}")
    return lines
