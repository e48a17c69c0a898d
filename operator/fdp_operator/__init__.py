"""fdp_operator: the kopf operator for federated-dp-llm."""
