"""Attack review of the operator's own login handler (handlers.login): it must give kopf the
same credentials kopf's ``login_via_client`` gave (in-cluster first, then ``$KUBECONFIG``),
and a re-login (kopf re-authenticates after a 401) must pick up a rotated ServiceAccount
token, never a stale one or the kubeconfig's."""

from __future__ import annotations

import base64
from pathlib import Path

import kopf
import kubernetes
import pytest
from fdp_operator.handlers import login
from kubernetes.config import incluster_config

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {{server: "https://kubeconfig.invalid:6443", certificate-authority-data: "{ca}"}}
users:
- name: u
  user: {{client-certificate-data: "{cert}", client-key-data: "{key}"}}
contexts:
- name: c
  context: {{cluster: c, user: u}}
current-context: c
"""


@pytest.fixture(autouse=True)
def _keep_the_clients_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """login_via_client loads the client's global default configuration: restore it."""
    monkeypatch.setattr(kubernetes.client.Configuration, "_default", None)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _kubeconfig(tmp_path: Path) -> str:
    path = tmp_path / "kubeconfig.yaml"
    path.write_text(KUBECONFIG.format(ca=_b64("CA PEM"), cert=_b64("CERT PEM"), key=_b64("KEY PEM")))
    return str(path)


def _in_a_pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: str) -> Path:
    token_file, ca_file = tmp_path / "token", tmp_path / "ca.crt"
    token_file.write_text(token)
    ca_file.write_text("SA CA PEM")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token_file))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca_file))
    return token_file


def _fields(info: kopf.ConnectionInfo) -> dict[str, object]:
    return {
        "server": info.server,
        "insecure": info.insecure,
        "scheme": info.scheme,
        "token": info.token,
        "username": info.username,
        "password": info.password,
        "has_ca": info.ca_path is not None or info.ca_data is not None,
        "has_cert": info.certificate_path is not None,
        "has_key": info.private_key_path is not None,
    }


def test_in_cluster_wins_over_kubeconfig_and_matches_kopf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", _kubeconfig(tmp_path))
    _in_a_pod(tmp_path, monkeypatch, "sa-token-1")
    ours = login(settings=kopf.OperatorSettings())
    theirs = kopf.login_via_client(
        logger=kopf.LocalObjectLogger(body={}, settings=kopf.OperatorSettings()),
        settings=kopf.OperatorSettings(),
    )
    assert theirs is not None
    assert ours.server == "https://10.0.0.1:443"
    assert (str(ours.scheme).lower(), ours.token) == ("bearer", "sa-token-1")
    assert _fields(ours) == _fields(theirs)


def test_a_relogin_reads_the_rotated_service_account_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = _in_a_pod(tmp_path, monkeypatch, "sa-token-1")
    assert login(settings=kopf.OperatorSettings()).token == "sa-token-1"
    token_file.write_text("sa-token-2")  # the kubelet rotated the projected token
    assert login(settings=kopf.OperatorSettings()).token == "sa-token-2"


def test_client_certificates_from_kubeconfig_match_kopf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    monkeypatch.setenv("KUBECONFIG", _kubeconfig(tmp_path))
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", _kubeconfig(tmp_path))
    ours = login(settings=kopf.OperatorSettings())
    theirs = kopf.login_via_client(
        logger=kopf.LocalObjectLogger(body={}, settings=kopf.OperatorSettings()),
        settings=kopf.OperatorSettings(),
    )
    assert theirs is not None
    assert _fields(ours) == _fields(theirs)
    assert ours.certificate_path and Path(ours.certificate_path).read_text() == "CERT PEM"
    assert ours.private_key_path and Path(ours.private_key_path).read_text() == "KEY PEM"
    assert ours.ca_path and Path(ours.ca_path).read_text() == "CA PEM"
    assert ours.token is None and ours.insecure is False
