"""DP consensus over public candidate answers (PATE's GNMax), pure apart from the noise.

Called by the request path after asking k hospitals (one node each) to pick one of the
request's public `options`. Steps:

1. **Votes.** Each hospital's answer is mapped to an option by normalised exact match
   (``config.normalize_answer``: NFKC, case-folded, whitespace collapsed, trailing
   punctuation stripped); anything else abstains. One vote per hospital: the request path
   asks at most one node of each hospital.
2. **Noisy histogram over all options.** Discrete Gaussian noise N_Z(0, sigma^2) from
   OpenDP (``privacy.mechanisms.noisy_counts``) is added to every option's integer vote
   count, including options nobody voted for. One hospital changing its vote moves two
   counts by one: RDP eps(alpha) = alpha / sigma^2 per hospital
   (``privacy.events.gnmax_event``), which is what the user, the department and every asked
   hospital are charged.
3. **Release.** Only the text of the option with the largest noisy count is released (ties
   broken uniformly at random with the OS's CSPRNG: data-independent post-processing, and
   unlike "lowest index" it does not favour the options listed first): never a hospital's own
   text, so whatever the nodes answer, the output is one of the public options.
   ``confidence`` (noisy winner count / hospitals asked, clipped to [0, 1]) and
   ``consensus_reached`` (noisy winner count above half) come from the noisy counts only:
   post-processing, no extra cost.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fdp_router.config import normalize_answer
from fdp_router.privacy.mechanisms import noisy_counts

NoisyCounts = Callable[[Sequence[int], float], list[int]]


def vote_of(answer: str, options: Sequence[str]) -> int | None:
    """The option an answer names (normalised exact match), or None: the hospital abstains."""
    key = normalize_answer(answer)
    for i, option in enumerate(options):
        if normalize_answer(option) == key:
            return i
    return None


@dataclass(frozen=True, slots=True)
class ConsensusResult:
    winner: int  # index into the options
    answer: str  # the winning option's text: the only text released
    hospitals: int  # hospitals that answered (votes plus abstentions)
    abstained: int
    consensus_reached: bool
    confidence: float


def aggregate(
    answers: Sequence[str],
    options: Sequence[str],
    sigma: float,
    noise: NoisyCounts = noisy_counts,
) -> ConsensusResult:
    """GNMax over `options` given one answer text per hospital (at least one)."""
    if not answers:
        raise ValueError("answers: need at least one hospital's answer")
    if len(options) < 2:
        raise ValueError("options: need at least two")
    counts = [0] * len(options)
    abstained = 0
    for text in answers:
        vote = vote_of(text, options)
        if vote is None:
            abstained += 1
        else:
            counts[vote] += 1
    noisy = noise(counts, sigma)
    top_count = max(noisy)
    best = secrets.choice([i for i, v in enumerate(noisy) if v == top_count])
    n = len(answers)
    top = noisy[best]
    return ConsensusResult(
        winner=best,
        answer=options[best],
        hospitals=n,
        abstained=abstained,
        consensus_reached=top > n / 2,
        confidence=round(min(1.0, max(0.0, top / n)), 4),
    )


def vote_instruction(options: Sequence[str]) -> str:
    """The system message that asks a node to pick one option (sent with ``fdp_options``)."""
    listed = "\n".join(f"- {o}" for o in options)
    return (
        "Answer with exactly one of the following options, copied verbatim, and nothing else. "
        "If none applies, answer: abstain.\n" + listed
    )
