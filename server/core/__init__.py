"""The request pipeline: resolve, gather features, score (render + tokenize, infer), rank. No gRPC here."""
