"""The request pipeline: assemble, render + tokenize, infer, rules. No gRPC here."""
