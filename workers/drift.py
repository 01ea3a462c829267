"""Drift detection with rolling windows in Redis.

Label-free (every verdict): PSI of board scores and of candidate regions per board against a
reference (the line's first N boards, kept in Redis and in PostgreSQL), and the review share
against the reference's. Label-based (every review outcome in the unbiased sample: boards
sent to review plus the audit sample): rolling FNR and FPR, inverse-probability weighted, that
alert when the Wilson interval's lower bound clears baseline + margin.

An alert is raised once when its metric crosses the limit and re-armed when it falls back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import redis

from infra.settings import QualitySettings
from infra.stats import (
    CANDIDATE_EDGES,
    histogram,
    psi,
    psi_limit,
    quantile_edges,
    weighted_rate,
    wilson_interval,
)
from schemas.events import Alert


@dataclass(frozen=True)
class BoardObservation:
    event_id: str
    line: str
    model_version: str
    verdict: str
    score: float
    n_regions: int
    decided_at: float  # epoch seconds (UTC)


@dataclass(frozen=True)
class LabelObservation:
    event_id: str
    line: str
    model_version: str
    verdict: str
    defective: bool
    weight: float  # 1 / P(the board was labelled): 1 for review, 1 / audit rate for audits
    decided_at: float


class ReferenceStore(Protocol):
    def load(self, line: str) -> dict[str, Any] | None: ...

    def save(self, line: str, reference: dict[str, Any]) -> None: ...


Baselines = Callable[[str], tuple[float, float]]
"""model version → (baseline FNR, baseline FPR)"""


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class DriftMonitor:
    def __init__(
        self,
        client: redis.Redis,
        settings: QualitySettings,
        prefix: str = "linecheck",
        baselines: Baselines | None = None,
        references: ReferenceStore | None = None,
        seen_ttl_s: int = 7 * 86400,
    ) -> None:
        self.r = client
        self.q = settings
        self.prefix = prefix
        self.baselines = baselines or (lambda _v: (settings.baseline_fnr, settings.baseline_fpr))
        self.references = references
        self.seen_ttl_s = seen_ttl_s

    def _key(self, line: str, *parts: str) -> str:
        return ":".join((self.prefix, "drift", line, *parts))

    # ---------------------------------------------------------------- label-free
    def observe_board(self, obs: BoardObservation) -> list[Alert]:
        """Add a decided board to its line's windows; alerts that this board triggered."""
        if not self.r.set(
            self._key(obs.line, "seen", obs.event_id), 1, nx=True, ex=self.seen_ttl_s
        ):
            return []  # a redelivered verdict counts once
        item = json.dumps(asdict(obs))
        reference = self._reference(obs.line)
        if reference is None:
            n = int(self.r.rpush(self._key(obs.line, "ref"), item))
            if n >= self.q.reference_boards:
                self._freeze_reference(obs.line)
            return []
        pipe = self.r.pipeline(transaction=True)
        pipe.lpush(self._key(obs.line, "win"), item)
        pipe.ltrim(self._key(obs.line, "win"), 0, self.q.window_boards - 1)
        pipe.incr(self._key(obs.line, "count"))
        _, _, count = pipe.execute()
        if int(count) < self.q.window_boards or int(count) % self.q.check_every:
            return []
        window = [
            BoardObservation(**json.loads(v))
            for v in self.r.lrange(self._key(obs.line, "win"), 0, -1)
        ]
        return self._check_label_free(obs, reference, window)

    def _reference(self, line: str) -> dict[str, Any] | None:
        raw = self.r.get(self._key(line, "reference"))
        if raw is not None:
            return dict(json.loads(raw))
        if self.references is not None:
            stored = self.references.load(line)
            if stored is not None:  # Redis was flushed: the reference survives in PostgreSQL
                self.r.set(self._key(line, "reference"), json.dumps(stored))
                return stored
        return None

    def _freeze_reference(self, line: str) -> None:
        boards = [
            BoardObservation(**json.loads(v)) for v in self.r.lrange(self._key(line, "ref"), 0, -1)
        ]
        scores = [b.score for b in boards]
        edges = quantile_edges(scores, self.q.psi_bins)
        reference = {
            "boards": len(boards),
            "model_version": boards[-1].model_version,
            "score_edges": edges,
            "score_counts": histogram(scores, edges),
            "candidate_counts": histogram([b.n_regions for b in boards], CANDIDATE_EDGES[1:]),
            "review_rate": sum(b.verdict == "review" for b in boards) / len(boards),
            "from": boards[0].decided_at,
            "to": boards[-1].decided_at,
        }
        self.r.set(self._key(line, "reference"), json.dumps(reference))
        if self.references is not None:
            self.references.save(line, reference)

    def _check_label_free(
        self, obs: BoardObservation, ref: dict[str, Any], window: list[BoardObservation]
    ) -> list[Alert]:
        alerts: list[Alert] = []
        since = _ts(min(b.decided_at for b in window))
        n_ref, n_cur = int(ref["boards"]), len(window)
        checks = (
            ("score_psi", ref["score_counts"],
             histogram([b.score for b in window], ref["score_edges"])),
            ("candidates_psi", ref["candidate_counts"],
             histogram([b.n_regions for b in window], CANDIDATE_EDGES[1:])),
        )  # fmt: skip
        for metric, ref_counts, cur_counts in checks:
            value = psi(ref_counts, cur_counts)
            limit = psi_limit(self.q.psi_limit, len(ref_counts), n_ref, n_cur)
            alert = self._edge(
                obs.line,
                metric,
                value > limit,
                Alert(
                    metric=metric,  # type: ignore[arg-type]
                    line=obs.line,
                    model_version=obs.model_version,
                    value=value,
                    baseline=0.0,
                    limit=limit,
                    window=n_cur,
                    since=since,
                    trigger_event_id=obs.event_id,
                    message=(
                        f"{metric.replace('_psi', '')} distribution shifted on line {obs.line}: "
                        f"PSI {value:.3f} > {limit:.3f} over the last {n_cur} boards vs the "
                        f"first {n_ref}"
                    ),
                ),
            )
            alerts += alert
        k = sum(b.verdict == "review" for b in window)
        lo, hi = wilson_interval(k, n_cur, self.q.z)
        base = float(ref["review_rate"])
        limit = min(1.0, base + self.q.review_margin)
        alerts += self._edge(
            obs.line,
            "review_rate",
            lo > limit,
            Alert(
                metric="review_rate",
                line=obs.line,
                model_version=obs.model_version,
                value=k / n_cur,
                baseline=base,
                limit=limit,
                lower=lo,
                upper=hi,
                window=n_cur,
                since=since,
                trigger_event_id=obs.event_id,
                message=(
                    f"review rate on line {obs.line} is {k / n_cur:.1%} "
                    f"[{lo:.1%}, {hi:.1%}] over {n_cur} boards, reference {base:.1%}"
                ),
            ),
        )
        return alerts

    # ---------------------------------------------------------------- label-based
    def observe_label(self, obs: LabelObservation) -> list[Alert]:
        """Add (or replace: a superseding outcome) a board's label in the rolling window."""
        ids_key, map_key = self._key(obs.line, "labels"), self._key(obs.line, "labelmap")
        known = self.r.hexists(map_key, obs.event_id)
        self.r.hset(map_key, obs.event_id, json.dumps(asdict(obs)))
        if not known:
            self.r.lpush(ids_key, obs.event_id)
            dropped = self.r.lrange(ids_key, self.q.label_window, -1)
            if dropped:
                self.r.ltrim(ids_key, 0, self.q.label_window - 1)
                self.r.hdel(map_key, *dropped)
        labels = [LabelObservation(**json.loads(v)) for v in self.r.hvals(map_key)]
        base_fnr, base_fpr = self.baselines(obs.model_version)
        alerts: list[Alert] = []
        for metric, positives, miss, base, margin in (
            ("fnr", True, "pass", base_fnr, self.q.fnr_margin),
            ("fpr", False, "fail", base_fpr, self.q.fpr_margin),
        ):
            group = [x for x in labels if x.defective is positives]
            if len(group) < self.q.min_labelled:
                continue
            rate, n_eff, k_eff = weighted_rate((x.verdict == miss, x.weight) for x in group)
            lo, hi = wilson_interval(k_eff, n_eff, self.q.z)
            limit = min(1.0, base + margin)
            since = _ts(min(x.decided_at for x in group))
            word = "escape rate (FNR)" if metric == "fnr" else "false-call rate (FPR)"
            alerts += self._edge(
                obs.line,
                metric,
                lo > limit,
                Alert(
                    metric=metric,  # type: ignore[arg-type]
                    line=obs.line,
                    model_version=obs.model_version,
                    value=rate,
                    baseline=base,
                    limit=limit,
                    lower=lo,
                    upper=hi,
                    window=len(group),
                    since=since,
                    trigger_event_id=obs.event_id,
                    message=(
                        f"{word} on line {obs.line} is {rate:.1%} [{lo:.1%}, {hi:.1%}] over "
                        f"{len(group)} labelled boards; baseline {base:.1%}, limit {limit:.1%}"
                    ),
                ),
            )
        return alerts

    # ---------------------------------------------------------------- alert state
    def _edge(self, line: str, metric: str, drifted: bool, alert: Alert) -> list[Alert]:
        """Raise once on the rising edge; re-arm when the metric is back within its limit."""
        key = self._key(line, "active", metric)
        if drifted:
            return [alert] if self.r.set(key, 1, nx=True) else []
        self.r.delete(key)
        return []

    def reset(self, line: str) -> None:
        """Forget a line's windows, reference and alert state (e.g. after a model change)."""
        for key in self.r.scan_iter(self._key(line, "*")):
            self.r.delete(key)
