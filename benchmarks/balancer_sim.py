"""Seeded discrete-event simulation of the balancers at 85 % load, heavy-tailed service.

    .venv/bin/python benchmarks/balancer_sim.py                 # ~40 s, writes docs/img/balancer_sim.png
    .venv/bin/python benchmarks/balancer_sim.py --requests 20000 --seeds 7 8 --json out.json

Model: 5 hospital nodes, each serving up to 4 requests at once (FIFO queue behind the
slots). Service times are Pareto (Lomax, shape 2.2: finite mean, heavy tail) with mean 1 s
on a normal node; a slow node takes 2x as long. Arrivals are Poisson at 85 % of the total
capacity. Each strategy is the real class from ``fdp_router.balancers`` picking from
`NodeView` snapshots; the same arrival and service-time streams are replayed for every
strategy (common random numbers), so differences come from the decisions only. Each
cell is the mean over ``--seeds`` runs (single runs of a heavy-tailed queue are noisy).

Scenarios:
- ``equal``: five equal nodes, load information fresh at every decision;
- ``one_slow``: node 0 is 2x slower, fresh information;
- ``stale_5s``: one slow node and load information (in-flight counts, EWMA latency)
  refreshed only every 5 s, as a router replica that learns other replicas' load late.
Report: p50 and p99 response time (queueing + service) per strategy and scenario.
"""

from __future__ import annotations

import argparse
import heapq
import json
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fdp_router.balancers import BALANCERS, NodeView, PickContext, make_balancer

SLOTS = 4
N_NODES = 5
LOAD = 0.85
PARETO_SHAPE = 2.2
EWMA = 0.2


@dataclass
class SimNode:
    id: str
    speed: float
    busy: int = 0
    queue: deque[tuple[float, float]] = field(default_factory=deque)
    ewma: float = 0.0

    def view(self) -> NodeView:
        return NodeView(
            id=self.id,
            hospital=f"h-{self.id}",
            in_flight=self.busy + len(self.queue),
            ewma_latency_s=self.ewma,
            max_concurrent=SLOTS,
        )


def simulate(strategy: str, speeds: list[float], stale_s: float, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)  # workload randomness (not privacy noise)
    capacity = sum(SLOTS * s for s in speeds)
    rate = LOAD * capacity
    inter = rng.exponential(1.0 / rate, size=n)
    # Lomax(shape) has mean 1/(shape-1); scale so the mean service time is 1 s.
    work = rng.pareto(PARETO_SHAPE, size=n) * (PARETO_SHAPE - 1)
    balancer = make_balancer(strategy, seed=seed)
    nodes = [SimNode(id=f"n{i}", speed=s) for i, s in enumerate(speeds)]
    ctx = PickContext(department="sim")
    events: list[tuple[float, int, int, int]] = []  # (time, seq, node index, request index)
    arrivals = np.cumsum(inter)
    response = np.zeros(n)
    seq = 0
    snapshot = [nd.view() for nd in nodes]
    next_refresh = stale_s

    def start(i: int, now: float) -> None:
        nonlocal seq
        nd = nodes[i]
        while nd.busy < SLOTS and nd.queue:
            arrived, w = nd.queue.popleft()
            nd.busy += 1
            seq += 1
            heapq.heappush(events, (now + w / nd.speed, seq, i, int(arrived)))

    arr_time: dict[int, float] = {}
    k = 0
    while k < n or events:
        if k < n and (not events or arrivals[k] <= events[0][0]):
            now = float(arrivals[k])
            if stale_s > 0:
                while now >= next_refresh:
                    snapshot = [nd.view() for nd in nodes]
                    next_refresh += stale_s
                views = snapshot
            else:
                views = [nd.view() for nd in nodes]
            chosen = balancer.pick(views, ctx)
            assert chosen is not None
            idx = int(chosen.id[1:])
            arr_time[k] = now
            nodes[idx].queue.append((k, float(work[k])))
            start(idx, now)
            k += 1
        else:
            now, _, idx, req = heapq.heappop(events)
            nd = nodes[idx]
            nd.busy -= 1
            rt = now - arr_time.pop(req)
            response[req] = rt
            nd.ewma = rt if nd.ewma == 0 else (1 - EWMA) * nd.ewma + EWMA * rt
            start(idx, now)
    return response


SCENARIOS = {
    "equal": ([1.0] * N_NODES, 0.0),
    "one_slow": ([0.5] + [1.0] * (N_NODES - 1), 0.0),
    "stale_5s": ([0.5] + [1.0] * (N_NODES - 1), 5.0),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=15000, help="requests per run")
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=[1, 2, 3], help="one run per seed, results averaged"
    )
    ap.add_argument("--json")
    ap.add_argument(
        "--plot", default=str(Path(__file__).resolve().parents[1] / "docs" / "img" / "balancer_sim.png")
    )
    args = ap.parse_args()
    rows = []
    for scen, (speeds, stale) in SCENARIOS.items():
        for strategy in sorted(BALANCERS):
            p50, p99, mean = [], [], []
            for seed in args.seeds:
                rt = simulate(strategy, speeds, stale, args.requests, seed)
                warm = rt[args.requests // 10 :]  # drop the warm-up tenth
                p50.append(np.percentile(warm, 50))
                p99.append(np.percentile(warm, 99))
                mean.append(warm.mean())
            row = {
                "scenario": scen,
                "strategy": strategy,
                "p50_s": float(np.mean(p50)),
                "p99_s": float(np.mean(p99)),
                "mean_s": float(np.mean(mean)),
            }
            rows.append(row)
            print(
                f"{scen:<9} {strategy:<17} p50 {row['p50_s']:6.3f} s  p99 {row['p99_s']:7.3f} s  "
                f"mean {row['mean_s']:6.3f} s",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        strategies = sorted(BALANCERS)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
        width = 0.8 / len(strategies)
        for ax, metric in zip(axes, ("p50_s", "p99_s"), strict=True):
            for j, s in enumerate(strategies):
                vals = [
                    next(r[metric] for r in rows if r["scenario"] == sc and r["strategy"] == s)
                    for sc in SCENARIOS
                ]
                ax.bar([i + j * width for i in range(len(SCENARIOS))], vals, width, label=s)
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(SCENARIOS))], list(SCENARIOS))
            ax.set_ylabel(f"{metric[:3]} response time (s)")
            ax.set_title(f"{metric[:3]} at 85% load, Pareto service, seeds {args.seeds}")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=110)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
