"""rerankd: real-time personalized reranking over gRPC, scored by Triton Inference Server."""

__version__ = "0.1.0"
