"""Pure rendering: typed specs in, desired Kubernetes objects (plain dicts) out.

Nothing in this package performs I/O or imports a Kubernetes client; the reconcile layer
(``fdp_operator.reconcile``) observes the cluster, calls these functions and applies
what they return.
"""
