"""bandit-router: route each LLM request to the model that answers it best for its cost, and learn from feedback."""
