"""fdp_router: the privacy-preserving LLM router of federated-dp-llm."""
