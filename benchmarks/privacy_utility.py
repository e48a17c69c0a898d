"""Privacy-utility of the demo mechanisms: accuracy vs epsilon, one PHI node vs a consensus of three.

    .venv/bin/python benchmarks/privacy_utility.py [--runs 200] [--out docs/img/privacy_utility.png]

Question: "most common first-line treatment for <condition> among our patients", for each of
the 7 conditions of ``fdp_router.demo_data``. Three synthetic hospitals (``hospital-1..3``,
seeds 1..3, 3,000 patients each; their favourites differ for some conditions).

- **Single PHI node** (what one demo node releases): ``demo_data.release`` at epsilon, i.e.
  subsample-and-aggregate over 20 disjoint record shards + OpenDP report-noisy-max, pure
  epsilon-DP per record. *Accuracy* = share of runs whose released treatment equals that
  hospital's TRUE majority treatment (over all its records), averaged over the three
  hospitals and the seven conditions.
- **Consensus of three hospitals** (PATE GNMax at the router): each hospital votes its true
  majority treatment; the vote histogram over the condition's public treatment list gets
  OpenDP discrete Gaussian noise (``fdp_router.consensus.aggregate``, the router's own) with
  sigma the smallest for which the release is (epsilon, 1e-5)-DP *per hospital* (a hospital's
  whole data is the unit): GNMax has RDP alpha / sigma^2, converted by dp_accounting's RDP
  accountant (orders up to 1e6). RDP is used because it holds exactly for the discrete
  Gaussian. *Accuracy* = share of runs whose released option equals the network's majority
  answer (the plurality of the three hospitals' votes; with three votes and two favourites
  it is always unique), averaged over the seven conditions.

Also printed: the share question ("share of patients with <condition> who were readmitted")
on the single node, median absolute error in percentage points against the true share.

The two curves protect different units: a record (single node) vs a whole hospital
(consensus), so at equal epsilon the consensus needs far more noise.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import dp_accounting
import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant
from fdp_router import demo_data as dd
from fdp_router.consensus import aggregate

REPO = Path(__file__).resolve().parent.parent
DELTA = 1e-5
EPSILONS = tuple(float(e) for e in np.round(np.logspace(-2, 1, 13), 4))
HOSPITALS = (("hospital-1", 1), ("hospital-2", 2), ("hospital-3", 3))
RDP_ORDERS = sorted({*rdp_privacy_accountant.DEFAULT_RDP_ORDERS, *np.geomspace(1.01, 1e6, 400).tolist()})


def gnmax_epsilon(sigma: float, delta: float = DELTA) -> float:
    """(epsilon, delta) per hospital of one GNMax release: Gaussian, L2 sensitivity sqrt 2."""
    acc = rdp_privacy_accountant.RdpAccountant(
        orders=RDP_ORDERS, neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    )
    acc.compose(dp_accounting.GaussianDpEvent(sigma / math.sqrt(2.0)))
    return float(acc.get_epsilon(delta))


def gnmax_sigma(epsilon: float, delta: float = DELTA) -> float:
    """The smallest sigma (to 1e-6 relative) with gnmax_epsilon(sigma) <= epsilon."""
    lo, hi = 1e-3, 1.0
    while gnmax_epsilon(hi, delta) > epsilon:
        lo, hi = hi, hi * 2.0
    while hi - lo > 1e-6 * hi:
        mid = (lo + hi) / 2.0
        if gnmax_epsilon(mid, delta) > epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def single_node(tables: list[dd.PatientTable], eps: float, runs: int) -> float:
    hits = total = 0
    for t in tables:
        for c in dd.CONDITIONS:
            q = dd.TreatmentQuestion(c)
            truth = dd.true_answer(t, q)
            hits += sum(dd.release(t, q, eps).value == truth for _ in range(runs))
            total += runs
    return hits / total


def consensus(tables: list[dd.PatientTable], sigma: float, runs: int) -> float:
    hits = total = 0
    for c in dd.CONDITIONS:
        votes = [0] * len(c.treatments)
        for t in tables:
            votes[c.treatments.index(dd.true_answer(t, dd.TreatmentQuestion(c)))] += 1
        majority = c.treatments[votes.index(max(votes))]
        answers = [dd.true_answer(t, dd.TreatmentQuestion(c)) for t in tables]
        hits += sum(aggregate(answers, c.treatments, sigma).answer == majority for _ in range(runs))
        total += runs
    return hits / total


def share_error_pp(tables: list[dd.PatientTable], eps: float, runs: int) -> float:
    errors = []
    for t in tables:
        for c in dd.CONDITIONS:
            q = dd.ShareQuestion(c, dd.OUTCOMES[1])
            truth = dd.true_share(t, q)
            errors += [abs((dd.release(t, q, eps).share or 0.0) - truth) * 100 for _ in range(runs)]
    return statistics.median(errors)


def plot(rows: list[dict[str, float]], chance: float, n_single: int, n_cons: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = [r["epsilon"] for r in rows]
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=130)
    for key, n, label, color in (
        ("single", n_single, "one PHI node: record-level pure ε (report-noisy-max over 20 shards)", "C0"),
        ("consensus", n_cons, "consensus of 3 hospitals: (ε, 1e-5) per hospital (GNMax)", "C3"),
    ):
        acc = np.array([r[key] for r in rows])
        half = 1.96 * np.sqrt(acc * (1 - acc) / n)
        ax.plot(eps, acc, marker="o", ms=4, color=color, label=label)
        ax.fill_between(eps, np.clip(acc - half, 0, 1), np.clip(acc + half, 0, 1), color=color, alpha=0.15)
    ax.axhline(chance, ls=":", color="grey", label=f"uniform guess ({chance:.2f})")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("ε per query")
    ax.set_ylabel("accuracy (released = true majority)")
    ax.set_title("Demo mechanisms: most common first-line treatment, 7 conditions")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=200, help="releases per (epsilon, hospital, condition)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "privacy_utility.png")
    args = ap.parse_args()

    started = time.perf_counter()
    tables = [dd.PatientTable(h, seed=s) for h, s in HOSPITALS]
    chance = statistics.fmean(1 / len(c.treatments) for c in dd.CONDITIONS)
    rows: list[dict[str, float]] = []
    print(
        f"{len(tables)} hospitals x {len(dd.CONDITIONS)} conditions, {args.runs} runs each; "
        f"shards per node: {tables[0].shards}; delta (consensus) = {DELTA:g}"
    )
    for c in dd.CONDITIONS:
        answers = [dd.true_answer(t, dd.TreatmentQuestion(c)) for t in tables]
        print(f"  {c.name}: hospitals' true answers {answers}")
    print()
    print(
        "| ε | single node: accuracy | consensus of 3: sigma | consensus: accuracy "
        "| share question: median abs error |"
    )
    print("|---|---|---|---|---|")
    for eps in EPSILONS:
        sigma = gnmax_sigma(eps)
        row = {
            "epsilon": eps,
            "single": single_node(tables, eps, args.runs),
            "sigma": sigma,
            "consensus": consensus(tables, sigma, args.runs),
            "share_pp": share_error_pp(tables, eps, args.runs),
        }
        rows.append(row)
        print(
            f"| {eps:g} | {row['single']:.3f} | {sigma:.3g} | {row['consensus']:.3f} "
            f"| {row['share_pp']:.2f} pp |",
            flush=True,
        )
    n_single = len(tables) * len(dd.CONDITIONS) * args.runs
    plot(rows, chance, n_single, len(dd.CONDITIONS) * args.runs, args.out)
    print(f"\nuniform guess: {chance:.3f}; wrote {args.out} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
