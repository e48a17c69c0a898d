"""The DEMO hospital's data and its record-level DP mechanism (pure logic, no I/O).

``demo_node.py`` serves this over HTTP; ``benchmarks/privacy_utility.py`` measures it. A demo
hospital holds a **synthetic** patient table generated from ``(seed, hospital)``: each patient
has a condition, a first-line treatment drawn from that condition's *public* list of
treatments with hospital-specific skewed probabilities, and an outcome. No real data.

Questions it answers (a regex anywhere in the last user message, case-insensitive, so a
unique suffix still matches), see `parse_question`:

- "most common first-line treatment for <condition> among our patients"
- "share of patients with <condition> who <outcome>" (e.g. "who were readmitted")

Mechanisms (record-level pure epsilon-DP, add/remove one patient record):

- **Treatment: subsample-and-aggregate + report-noisy-max.** The records of the condition are
  split into ``shards`` disjoint shards by a hash of the patient id (each record's shard
  depends on that record alone; ``shards`` is fixed when the table is built, from the
  configured table size, never from the records a query touches). Each non-empty shard votes
  its majority treatment (ties to the first in the public list). Adding or removing one record
  changes one shard, so at most one vote moves: one count -1 and another +1 (or one count
  +-1), L-inf sensitivity 1, not monotone. OpenDP's ``make_noisy_max`` (MaxDivergence:
  exponential noise, i.e. permute-and-flip) over the condition's whole public treatment list,
  at the scale its own privacy map says is epsilon-DP for d_in = 1 (2/epsilon, rounded up).
- **Share: discrete Laplace on (numerator, denominator).** One record moves each count by at
  most 1, L1 sensitivity 2 for the pair; OpenDP's ``make_laplace`` on an integer vector
  (discrete Laplace) at the scale its privacy map says is epsilon-DP for d_in = 2
  (2/epsilon, rounded up). The share is the clipped ratio of the noisy counts (post-processing).

Release noise comes only from OpenDP's samplers (OS randomness, exact discrete sampling);
``numpy.random.Generator`` is used only to *generate* the synthetic table from its seed.

The TRUE (non-private) answer, `true_answer`, is what the hospital votes in a consensus: the
vote goes only to the router's GNMax aggregator, which adds the noise (PATE).
"""

from __future__ import annotations

import hashlib
import math
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from fdp_router.privacy.mechanisms import opendp

DEFAULT_PATIENTS = 3000
MIN_PATIENTS = 100
MAX_PATIENTS = 1_000_000
PATIENTS_PER_SHARD = 150  # shards = patients // 150, clamped to [MIN_SHARDS, MAX_SHARDS]
MIN_SHARDS = 5
MAX_SHARDS = 50


@dataclass(frozen=True, slots=True)
class Condition:
    name: str
    aliases: tuple[str, ...]  # lower case, matched as whole words
    treatments: tuple[str, ...]  # public list, guideline order
    prevalence: float  # base share of the hospital's patients
    outcome_rates: tuple[float, ...]  # base rates over OUTCOMES


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    phrase: str  # how an answer sentence says it: "patients with X who <phrase>"
    pattern: str  # regex after "who "


OUTCOMES: tuple[Outcome, ...] = (
    Outcome("improved", "improved", r"(?:have |had )?improved"),
    Outcome("readmitted", "were readmitted", r"(?:were |was |are |got |have been )?readmitted"),
    Outcome(
        "intensive care",
        "were transferred to intensive care",
        r"(?:were |was |are )?(?:transferred|moved|admitted) to (?:the )?(?:intensive care|icu)"
        r"|went to (?:the )?(?:intensive care|icu)",
    ),
    Outcome("died", "died", r"died|did not survive"),
)

CONDITIONS: tuple[Condition, ...] = (
    Condition(
        "hypertension",
        ("hypertension", "high blood pressure"),
        (
            "thiazide diuretic",
            "ACE inhibitor",
            "calcium-channel blocker",
            "angiotensin receptor blocker",
            "beta blocker",
        ),
        0.24,
        (0.86, 0.09, 0.03, 0.02),
    ),
    Condition(
        "type 2 diabetes",
        ("type 2 diabetes", "type ii diabetes", "diabetes"),
        ("metformin", "SGLT2 inhibitor", "GLP-1 receptor agonist", "sulfonylurea", "DPP-4 inhibitor"),
        0.19,
        (0.80, 0.14, 0.04, 0.02),
    ),
    Condition(
        "asthma",
        ("asthma",),
        (
            "low-dose inhaled corticosteroid",
            "as-needed ICS-formoterol",
            "short-acting beta agonist alone",
            "leukotriene receptor antagonist",
        ),
        0.12,
        (0.88, 0.08, 0.03, 0.01),
    ),
    Condition(
        "heart failure",
        ("heart failure",),
        ("ACE inhibitor", "sacubitril-valsartan", "beta blocker", "loop diuretic", "SGLT2 inhibitor"),
        0.11,
        (0.62, 0.22, 0.08, 0.08),
    ),
    Condition(
        "community-acquired pneumonia",
        ("community-acquired pneumonia", "community acquired pneumonia", "pneumonia"),
        ("amoxicillin", "doxycycline", "ceftriaxone plus azithromycin", "levofloxacin"),
        0.12,
        (0.78, 0.10, 0.07, 0.05),
    ),
    Condition(
        "atrial fibrillation",
        ("atrial fibrillation", "afib"),
        ("apixaban", "rivaroxaban", "warfarin", "beta blocker for rate control"),
        0.12,
        (0.80, 0.13, 0.04, 0.03),
    ),
    Condition(
        "sepsis",
        ("sepsis",),
        ("piperacillin-tazobactam", "ceftriaxone", "meropenem", "cefepime plus vancomycin"),
        0.10,
        (0.58, 0.14, 0.16, 0.12),
    ),
)

# Probability profile over a condition's treatments (first = the hospital's favourite):
# a clear favourite, not an overwhelming one.
_PROFILE = (0.40, 0.24, 0.16, 0.11, 0.09)
_SWAP_TOP_TWO = 0.3  # per hospital and condition: the guideline's second choice is the favourite


class MechanismError(ValueError):
    """The requested epsilon cannot be used by the mechanism (names the field and why)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


# --- questions --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TreatmentQuestion:
    condition: Condition


@dataclass(frozen=True, slots=True)
class ShareQuestion:
    condition: Condition
    outcome: Outcome


Question = TreatmentQuestion | ShareQuestion

_ALIASES: dict[str, Condition] = {a: c for c in CONDITIONS for a in c.aliases}
_COND_RE = "|".join(re.escape(a) for a in sorted(_ALIASES, key=len, reverse=True))
_TREATMENT_RE = re.compile(
    rf"\bmost common first[- ]line (?:treatment|therapy) for (?:patients with )?(?P<cond>{_COND_RE})"
    r" among our patients\b"
)
_OUTCOME_RE = "|".join(f"(?P<o{i}>{o.pattern})" for i, o in enumerate(OUTCOMES))
_SHARE_RE = re.compile(
    rf"\b(?:share|proportion|fraction|percentage) of (?:our )?patients with (?P<cond>{_COND_RE})"
    rf" who (?:{_OUTCOME_RE})\b"
)


def parse_question(text: str) -> Question | None:
    """The question in `text` if it is in the family (anywhere in it), else None."""
    low = " ".join(text.lower().split())
    m = _TREATMENT_RE.search(low)
    if m:
        return TreatmentQuestion(_ALIASES[m.group("cond")])
    m = _SHARE_RE.search(low)
    if m:
        i = next(i for i in range(len(OUTCOMES)) if m.group(f"o{i}") is not None)
        return ShareQuestion(_ALIASES[m.group("cond")], OUTCOMES[i])
    return None


# --- the table --------------------------------------------------------------------------


def shards_for(patients: int) -> int:
    """The fixed shard count of a table of `patients` records (a public setting)."""
    return max(MIN_SHARDS, min(MAX_SHARDS, patients // PATIENTS_PER_SHARD))


@dataclass(frozen=True, slots=True)
class ConditionSummary:
    """What the mechanisms read about one condition (computed once from the records)."""

    records: int
    votes: tuple[int, ...]  # shard votes per public treatment
    treatment_counts: tuple[int, ...]  # records per public treatment
    outcome_counts: tuple[int, ...]  # records per outcome


class PatientTable:
    """A synthetic hospital: `patients` records generated from (seed, hospital)."""

    def __init__(
        self, hospital: str, seed: int = 0, patients: int = DEFAULT_PATIENTS, shards: int | None = None
    ) -> None:
        if isinstance(patients, bool) or not MIN_PATIENTS <= patients <= MAX_PATIENTS:
            raise ValueError(f"patients: must be in [{MIN_PATIENTS}, {MAX_PATIENTS}], got {patients!r}")
        self.hospital = hospital
        self.seed = seed
        self.patients = patients
        self.shards = shards_for(patients) if shards is None else shards
        if self.shards < 1:
            raise ValueError(f"shards: must be >= 1, got {self.shards}")
        rng = np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(hospital.encode())])
        self.treatment_probs = tuple(_treatment_probs(rng, c) for c in CONDITIONS)
        prevalence = np.array([c.prevalence for c in CONDITIONS]) * np.exp(
            rng.normal(0, 0.15, len(CONDITIONS))
        )
        prevalence /= prevalence.sum()
        self.condition = rng.choice(len(CONDITIONS), size=patients, p=prevalence)
        self.treatment = np.zeros(patients, dtype=np.int64)
        self.outcome = np.zeros(patients, dtype=np.int64)
        for ci, c in enumerate(CONDITIONS):
            rows = np.flatnonzero(self.condition == ci)
            self.treatment[rows] = rng.choice(len(c.treatments), size=rows.size, p=self.treatment_probs[ci])
            rates = np.array(c.outcome_rates) * np.exp(rng.normal(0, 0.2, len(OUTCOMES)))
            self.outcome[rows] = rng.choice(len(OUTCOMES), size=rows.size, p=rates / rates.sum())
        self.patient_ids = tuple(f"{hospital}-{i:07d}" for i in range(patients))
        self.shard = np.array([shard_of(pid, self.shards) for pid in self.patient_ids], dtype=np.int64)
        self.summaries = tuple(self._summarise(ci) for ci in range(len(CONDITIONS)))

    def _summarise(self, ci: int) -> ConditionSummary:
        c = CONDITIONS[ci]
        rows = self.condition == ci
        treatments = self.treatment[rows]
        return ConditionSummary(
            records=int(rows.sum()),
            votes=shard_votes(treatments, self.shard[rows], self.shards, len(c.treatments)),
            treatment_counts=tuple(int(x) for x in np.bincount(treatments, minlength=len(c.treatments))),
            outcome_counts=tuple(int(x) for x in np.bincount(self.outcome[rows], minlength=len(OUTCOMES))),
        )

    def summary(self, condition: Condition) -> ConditionSummary:
        return self.summaries[CONDITIONS.index(condition)]


def _treatment_probs(rng: np.random.Generator, c: Condition) -> tuple[float, ...]:
    n = len(c.treatments)
    profile = np.array(_PROFILE[:n]) * np.exp(rng.normal(0, 0.1, n))
    profile = np.sort(profile)[::-1]  # keep the favourite clear after the jitter
    order = list(range(n))
    if rng.random() < _SWAP_TOP_TWO:
        order[0], order[1] = order[1], order[0]
    probs = np.zeros(n)
    probs[order] = profile
    return tuple(float(p) for p in probs / probs.sum())


def shard_of(patient_id: str, shards: int) -> int:
    """A record's shard: a hash of its own id only (so one record moves one shard)."""
    digest = hashlib.blake2b(patient_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def shard_votes(treatments: Any, shard: Any, shards: int, n_treatments: int) -> tuple[int, ...]:
    """Vote histogram: each non-empty shard votes its majority treatment (ties: lowest index)."""
    votes = [0] * n_treatments
    for s in range(shards):
        in_shard = treatments[shard == s]
        if in_shard.size:
            votes[int(np.argmax(np.bincount(in_shard, minlength=n_treatments)))] += 1
    return tuple(votes)


# --- answers ----------------------------------------------------------------------------


def true_answer(table: PatientTable, q: Question) -> str:
    """The non-private answer: the majority treatment over all records, or the share (in %)."""
    s = table.summary(q.condition)
    if isinstance(q, TreatmentQuestion):
        return q.condition.treatments[int(np.argmax(s.treatment_counts))]
    return f"{100.0 * true_share(table, q):.1f}%"


def true_share(table: PatientTable, q: ShareQuestion) -> float:
    s = table.summary(q.condition)
    return s.outcome_counts[OUTCOMES.index(q.outcome)] / max(s.records, 1)


@dataclass(frozen=True, slots=True)
class Release:
    value: str  # the released treatment, or the share as "12.3%"
    sentence: str
    epsilon: float  # what the mechanism's privacy map certifies (<= the requested epsilon)
    basis: str
    share: float | None = None


def release(table: PatientTable, q: Question, epsilon: float) -> Release:
    """Answer `q` from `table` under record-level epsilon-DP (MechanismError for a bad epsilon)."""
    eps = _check_epsilon(epsilon)
    s = table.summary(q.condition)
    if isinstance(q, TreatmentQuestion):
        treatment = q.condition.treatments[noisy_max(s.votes, eps)]
        return Release(
            value=treatment,
            sentence=f"Most common first-line treatment for {q.condition.name} among our patients: "
            f"{treatment} (differentially private release, epsilon = {eps:g}).",
            epsilon=eps,
            basis=f"record-level DP: report-noisy-max over {table.shards} disjoint shards",
        )
    num, den = noisy_counts((s.outcome_counts[OUTCOMES.index(q.outcome)], s.records), eps)
    share = min(1.0, max(0.0, num / max(den, 1)))
    value = f"{100.0 * share:.1f}%"
    return Release(
        value=value,
        sentence=f"Share of patients with {q.condition.name} who {q.outcome.phrase}: {value} "
        f"(differentially private release, epsilon = {eps:g}).",
        epsilon=eps,
        basis="record-level DP: discrete Laplace on (numerator, denominator) counts",
        share=share,
    )


def _check_epsilon(epsilon: float) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float):
        raise MechanismError("epsilon", f"must be a number, got {type(epsilon).__name__}")
    e = float(epsilon)
    if not math.isfinite(e) or e <= 0:
        raise MechanismError("epsilon", f"must be a finite number > 0, got {e!r}")
    if not math.isfinite(2.0 / e):
        raise MechanismError("epsilon", f"too small for this mechanism: {e!r}")
    return e


# --- OpenDP measurements ----------------------------------------------------------------


def _calibrated(make: Callable[[float], Any], d_in: int, epsilon: float) -> Any:
    """The measurement at the smallest scale >= d_in/epsilon (sensitivity d_in, up to OpenDP's
    factor) whose privacy map gives <= epsilon; the exact scale can round up by one ulp."""
    dp = opendp()
    first = make(1.0)
    scale = float(first.map(d_in)) / epsilon  # map is linear in 1/scale: map(d_in) at scale 1
    for _ in range(64):
        m = make(scale)
        if float(m.map(d_in)) <= epsilon:
            return m
        scale = math.nextafter(scale, math.inf)
    scale = float(dp.binary_search_param(make, d_in=d_in, d_out=epsilon))
    return make(scale)


@lru_cache(maxsize=512)
def noisy_max_measurement(epsilon: float) -> Any:
    """OpenDP report-noisy-max, epsilon-DP for vote histograms at L-inf distance 1 (non-monotone)."""
    dp = opendp()
    space = dp.vector_domain(dp.atom_domain(T=int)), dp.linf_distance(T=int, monotonic=False)
    return _calibrated(lambda s: dp.m.make_noisy_max(*space, dp.max_divergence(), scale=s), 1, epsilon)


@lru_cache(maxsize=512)
def noisy_counts_measurement(epsilon: float) -> Any:
    """OpenDP discrete Laplace on an integer vector, epsilon-DP at L1 distance 2."""
    dp = opendp()
    space = dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int)
    return _calibrated(lambda s: dp.m.make_laplace(*space, scale=s), 2, epsilon)


def noisy_max(votes: tuple[int, ...] | list[int], epsilon: float) -> int:
    """Index of the noisy maximum of `votes` (one shard's vote moves: L-inf 1, non-monotone)."""
    return int(noisy_max_measurement(_check_epsilon(epsilon))(list(votes)))


def noisy_counts(counts: tuple[int, int], epsilon: float) -> tuple[int, int]:
    """(numerator, denominator) with discrete Laplace noise; epsilon-DP together (L1 distance 2)."""
    out = noisy_counts_measurement(_check_epsilon(epsilon))(list(counts))
    return int(out[0]), int(out[1])


def privacy_map(kind: str, epsilon: float) -> float:
    """The epsilon OpenDP's privacy map certifies for the measurement the node uses at `epsilon`."""
    if kind == "treatment":
        return float(noisy_max_measurement(_check_epsilon(epsilon)).map(1))
    if kind == "share":
        return float(noisy_counts_measurement(_check_epsilon(epsilon)).map(2))
    raise ValueError(f"kind: must be 'treatment' or 'share', got {kind!r}")
