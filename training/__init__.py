"""Fine-tuning the reranker on interaction logs, validated with the evaluation protocol and
exported to a model repository version."""
