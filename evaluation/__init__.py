"""Offline protocols and their reports: the leave-one-out protocol (retriever lists, the blend,
served or in-process scoring), the cold-start protocol, baselines and reference models."""
