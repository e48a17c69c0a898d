"""The operator in-process under kopf's ``KopfRunner`` (as kopf tests its own examples).

Every other e2e test starts ``fdp-operator run`` as a process; this one shows the handlers
need neither: no module globals, no environment read at import, state in kopf's ``memo``
(``handlers.build_registry``). A router reaches Ready and the runner stops cleanly.
"""

from __future__ import annotations

import os

from fdp_operator.handlers import OperatorConfig, build_registry
from fdp_operator.security import OperatorSettings
from kopf.testing import KopfRunner

from .test_operator import _network


def test_the_operator_runs_in_process_and_a_router_becomes_ready(
    cluster, fdp_crds, kube, namespace, demo_nodes, monkeypatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig)
    registry = build_registry(
        OperatorConfig(resync_seconds=2, probe_tick_seconds=0.5), OperatorSettings.from_env(os.environ)
    )
    demo_nodes.tls_secrets(namespace)
    with KopfRunner(
        ["run", "--standalone", "--namespace", namespace], registry=registry, timeout=60
    ) as runner:
        _network(kube, namespace, demo_nodes)
        cluster.kubectl(
            "wait", "-n", namespace, "fr/fr", "--for=condition=Ready", "--timeout=90s", timeout=120
        )
        conds = {c["type"]: c["status"] for c in kube.get(namespace, "fr", "fr")["status"]["conditions"]}
        assert conds["Reconciling"] == "False" and conds["TLSReady"] == "True"
    assert runner.exception is None, runner.exception
