"""Analysis of trained models: evaluation metrics, memorization, attention heads."""
