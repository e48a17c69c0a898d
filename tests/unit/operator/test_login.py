"""The operator's credentials come from ``$KUBECONFIG`` as it is when it logs in.

The ``kubernetes`` package fixes its default kubeconfig path when it is imported; kopf's
``login_via_client`` uses that default. An operator started in-process after the variable
changed (``KopfRunner`` in tests) then talked to whatever ``~/.kube/config`` named, which
``kwokctl`` rewrites whenever another cluster comes up.
"""

from __future__ import annotations

from pathlib import Path

import kopf
import pytest
from fdp_operator.handlers import login
from fdp_operator.kube import load_configuration

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster: {{server: "https://{name}.invalid:6443", insecure-skip-tls-verify: true}}
users:
- name: u
  user: {{token: "token-of-{name}"}}
contexts:
- name: c
  context: {{cluster: {name}, user: u}}
current-context: c
"""


def _kubeconfig(tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(KUBECONFIG.format(name=name))
    return str(path)


@pytest.fixture(autouse=True)
def _not_in_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)


def test_the_kubeconfig_named_now_is_the_one_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", _kubeconfig(tmp_path, "first"))
    assert load_configuration().host == "https://first.invalid:6443"
    monkeypatch.setenv("KUBECONFIG", _kubeconfig(tmp_path, "second"))
    assert load_configuration().host == "https://second.invalid:6443"


def test_kopf_logs_in_with_the_same_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", _kubeconfig(tmp_path, "third"))
    info = login(settings=kopf.OperatorSettings())
    assert info.server == "https://third.invalid:6443"
    assert (info.scheme, info.token) == ("Bearer", "token-of-third")
    assert info.insecure is True
