"""Hot reload of the config file under load: no request fails, the new config takes over."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fdp_router.app import HOLDER, METRICS

from .conftest import Cluster, RouterFactory, auth, q, token


async def test_hot_reload_under_load_drops_no_request(
    router: RouterFactory, demo_cluster: Cluster, tmp_path: Path
) -> None:
    for n in demo_cluster.nodes:
        n.state.delay = 0.02
    base = demo_cluster.config(
        privacy={"budgets": {"per_user": 10.0, "per_department": 1000.0, "per_hospital": 1000.0}},
        cache={"enabled": False},
    )
    path = tmp_path / "router.json"
    path.write_text(json.dumps(base.model_dump(mode="json")))
    client = await router(base, config_path=path, reload_interval_seconds=0.05)
    holder = client.app[HOLDER]
    gen0 = holder.current.generation
    statuses: list[int] = []
    stop = asyncio.Event()

    async def worker(w: int) -> None:
        i = 0
        while not stop.is_set():
            r = await client.post(
                "/v1/inference",
                json={"prompt": q(f"fever {w}-{i}")},
                headers=auth(token(user=f"user-{w}-{i}")),
            )
            statuses.append(r.status)
            await r.read()
            i += 1

    workers = [asyncio.create_task(worker(w)) for w in range(8)]
    await asyncio.sleep(0.3)
    # 1) drop node-0 and switch the balancer
    data = base.model_dump(mode="json")
    data["nodes"] = data["nodes"][1:]
    data["routing"]["strategy"] = "least_request"
    path.write_text(json.dumps(data))
    for _ in range(1000):  # generous: the machine running CI may be busy
        if holder.current.generation > gen0:
            break
        await asyncio.sleep(0.02)
    assert holder.current.balancer.name == "least_request"
    served_by_0 = demo_cluster.nodes[0].state.completions
    await asyncio.sleep(0.3)
    # 2) an invalid file is rejected; the running config stays
    path.write_text('{"privacy": {"delta": 7}}')
    registry = client.app[METRICS].registry
    for _ in range(1000):
        if registry.get_sample_value("fdp_config_reloads_total", {"result": "error"}):
            break
        await asyncio.sleep(0.02)
    gen1 = holder.current.generation
    # 3) a privacy change opens a new ledger; the old one closes after its requests drain
    data["privacy"]["default_epsilon_per_query"] = 0.2
    path.write_text(json.dumps(data))
    for _ in range(1000):
        if holder.current.generation > gen1:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*workers)

    assert len(statuses) > 20
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert holder.current.config.privacy.default_epsilon_per_query == 0.2
    # after the reload finished, node-0 got at most the requests already in flight
    assert demo_cluster.nodes[0].state.completions <= served_by_0 + 8
    metrics = client.app[METRICS].render().decode()
    assert 'fdp_config_reloads_total{result="error"} 1.0' in metrics
