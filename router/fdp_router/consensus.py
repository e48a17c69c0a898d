"""DP consensus over several hospitals' answers (PATE's GNMax), pure apart from the noise.

Called by ``service.py`` after fanning a request out to k nodes. Steps:

1. **Candidate mapping: normalised exact match.** Each answer is normalised (Unicode
   NFKC, case-folded, whitespace collapsed, trailing punctuation stripped); answers with
   equal normal forms are one candidate. No embeddings: two paraphrases are two candidates.
2. **Votes.** Each hospital answering casts one vote for its candidate (the privacy unit
   is one hospital's vote).
3. **Noisy histogram.** Gaussian noise N(0, sigma^2) from the privacy core's secure
   sampler (``privacy.mechanisms.add_gaussian``, OpenDP) is added to each count. That is
   exactly the GNMax mechanism: one hospital changing its vote moves two counts by one,
   RDP eps(alpha) = alpha / sigma^2 (``privacy.events.gnmax_event``), which is what the
   request is charged.
4. **Release.** The argmax of the noisy counts is released. ``confidence`` (noisy winner
   count / answers, clipped to [0, 1]) and ``consensus_reached`` (noisy winner count above
   half the answers) are computed from the *noisy* counts only, so they are
   post-processing and cost nothing extra. Raw counts are never released.

Limit, stated honestly: with free text the candidate set is itself data-dependent (PATE
assumes a fixed label set); the released winner is one of the hospitals' answers.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fdp_router.privacy.mechanisms import add_gaussian


def normalize_answer(text: str) -> str:
    t = unicodedata.normalize("NFKC", text).casefold()
    t = " ".join(t.split())
    return t.rstrip(" .!;:,")


@dataclass(frozen=True, slots=True)
class ConsensusResult:
    answer: str  # the released candidate's text (first answer that mapped to it)
    winner_node: str
    candidates: int
    answers: int
    consensus_reached: bool
    confidence: float


def aggregate(
    answers: Sequence[tuple[str, str]],
    sigma: float,
    noise: Callable[[float, float], float] = add_gaussian,
) -> ConsensusResult:
    """`answers` are (node_id, text) pairs, at least one. Releases the GNMax winner."""
    if not answers:
        raise ValueError("answers: need at least one answer")
    order: list[str] = []
    first: dict[str, tuple[str, str]] = {}
    counts: dict[str, int] = {}
    for node_id, text in answers:
        key = normalize_answer(text)
        if key not in counts:
            order.append(key)
            first[key] = (node_id, text)
            counts[key] = 0
        counts[key] += 1
    noisy = [noise(float(counts[k]), sigma) for k in order]
    best = max(range(len(order)), key=lambda i: (noisy[i], -i))
    n = len(answers)
    top = noisy[best]
    node_id, text = first[order[best]]
    return ConsensusResult(
        answer=text,
        winner_node=node_id,
        candidates=len(order),
        answers=n,
        consensus_reached=top > n / 2,
        confidence=round(min(1.0, max(0.0, top / n)), 4),
    )
