"""Interaction logs and catalogues that models are trained and evaluated on (MovieLens-100K
today): fetching, parsing, the leave-one-out split, and loading them into a feature store."""
