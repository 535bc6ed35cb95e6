"""Feature store: items (text + attributes) and users' recent interactions."""

from server.features.base import FeatureStore, open_store

__all__ = ["FeatureStore", "open_store"]
