"""A small async Kubernetes API client (aiohttp) for the operator's own reads and writes.

kopf watches the custom resources; this client does everything else the reconcile steps
need: GET/LIST owned objects, server-side apply, DELETE, status merge-patches, Events.
Credentials come from the kubeconfig (``$KUBECONFIG``) or the in-cluster ServiceAccount,
loaded by the ``kubernetes`` package's config loaders (token refresh included). I/O module:
pure code never imports it.
"""

from __future__ import annotations

import json
import os
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from kubernetes import config as kube_config
from kubernetes.client import Configuration

# kind -> (API path prefix, plural)
RESOURCES: dict[str, tuple[str, str]] = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Secret": ("/api/v1", "secrets"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Service": ("/api/v1", "services"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Event": ("/api/v1", "events"),
    "Namespace": ("/api/v1", "namespaces"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "HospitalNode": ("/apis/fdp.io/v1alpha1", "hospitalnodes"),
    "PrivacyPolicy": ("/apis/fdp.io/v1alpha1", "privacypolicies"),
    "FederatedRouter": ("/apis/fdp.io/v1alpha1", "federatedrouters"),
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.message = message


def load_configuration() -> Configuration:
    """In-cluster credentials when running in a pod, else the kubeconfig.

    ``$KUBECONFIG`` is read now, not when the ``kubernetes`` package was imported (its
    default path is fixed at import): an operator started in-process after the variable
    changed (kopf's ``KopfRunner``, tests) must not fall back to ``~/.kube/config``, which
    may name another cluster."""
    cfg = Configuration()
    try:
        kube_config.load_incluster_config(client_configuration=cfg)
    except kube_config.ConfigException:
        kube_config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=cfg)
    return cfg


def bearer_token(cfg: Configuration) -> tuple[str | None, str | None]:
    """(scheme, token) of the configuration's Authorization header, if any (the kubernetes
    client keeps it as ``BearerToken`` since 36.0.1, as ``authorization`` before)."""
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    if not header:
        return None, None
    scheme, _, token = header.partition(" ")
    return (scheme, token) if token else (None, scheme)


@dataclass
class Kube:
    cfg: Configuration
    session: aiohttp.ClientSession

    @classmethod
    async def connect(cls, cfg: Configuration | None = None) -> Kube:
        cfg = cfg or load_configuration()
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.verify_ssl else None
        if ctx is not None and cfg.cert_file and cfg.key_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        connector = aiohttp.TCPConnector(ssl=ctx if ctx is not None else False, limit=32)
        timeout = aiohttp.ClientTimeout(total=30)
        return cls(cfg, aiohttp.ClientSession(connector=connector, timeout=timeout))

    async def close(self) -> None:
        await self.session.close()

    # ------------------------------------------------------------ low level

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self.cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
        if token:
            headers["Authorization"] = token
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body)
        if data is not None and content_type is None:
            content_type = "application/json"
        async with self.session.request(
            method,
            self.cfg.host.rstrip("/") + path,
            data=data,
            params=params,
            headers=self._headers(content_type),
        ) as resp:
            text = await resp.text()
            if resp.status >= 400:
                try:
                    err = json.loads(text)
                    raise ApiError(resp.status, err.get("message", text), err.get("reason", ""))
                except (ValueError, AttributeError):
                    raise ApiError(resp.status, text) from None
            return json.loads(text) if text else {}

    @staticmethod
    def path(kind: str, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        prefix, plural = RESOURCES[kind]
        p = prefix
        if namespace:
            p += f"/namespaces/{quote(namespace)}"
        p += f"/{plural}"
        if name:
            p += f"/{quote(name)}"
        if sub:
            p += f"/{sub}"
        return p

    # ------------------------------------------------------------ verbs

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", self.path(kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self, kind: str, namespace: str | None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        out = await self.request("GET", self.path(kind, namespace), params=params)
        return list(out.get("items") or [])

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """POST: create once, never overwrite (409 ``AlreadyExists`` if it exists)."""
        meta = obj["metadata"]
        return await self.request("POST", self.path(obj["kind"], meta.get("namespace")), body=obj)

    async def apply(self, obj: dict[str, Any], field_manager: str, *, force: bool = True) -> dict[str, Any]:
        """Server-side apply (``application/apply-patch+yaml``; JSON is valid YAML)."""
        meta = obj["metadata"]
        return await self.request(
            "PATCH",
            self.path(obj["kind"], meta.get("namespace"), meta["name"]),
            body=obj,
            content_type="application/apply-patch+yaml",
            params={"fieldManager": field_manager, "force": "true" if force else "false"},
        )

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        try:
            await self.request(
                "DELETE", self.path(kind, namespace, name), body={"propagationPolicy": "Background"}
            )
            return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise

    async def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        await self.request(
            "PATCH",
            self.path(kind, namespace, name, "status"),
            body={"status": status},
            content_type="application/merge-patch+json",
        )

    async def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self.request(
            "PATCH", self.path(kind, namespace, name), body=patch, content_type="application/merge-patch+json"
        )
