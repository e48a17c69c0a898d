"""Reconcile steps: observe the cluster, call the pure render/condition code, apply, write status.

One module per custom resource (router.py, node.py, policy.py) plus the TLS step
(tls_step.py). The kopf wiring (handlers.py) calls ``reconcile_*`` functions; each ends in
at most one status write, skipped when nothing changed.
"""
