"""The comparison table of a new and a serving version (``evaluation.compare``); the scoring
itself runs end to end in tests/integration/test_train_own_data.py."""

from evaluation.compare import comparison_markdown


def test_markdown_has_every_version_row_and_the_baselines():
    m = lambda x: {"ndcg@10": x, "hr@10": 2 * x}  # noqa: E731
    result = {"valid": {"users": 10, "scored_lists": 7,
                        "versions": {"v3 (new)": {"model": m(0.3), "final": m(0.35)},
                                     "v2 (serving)": {"model": m(0.2), "final": m(0.25)}},
                        "baselines": {"retriever": m(0.1), "random": m(0.05), "pop": m(0.01)}}}
    md = comparison_markdown(result)
    assert "### valid split: 10 users, 7 lists" in md
    assert "| v3 (new): model alone | 0.3000 | 0.6000 |" in md
    assert "| v2 (serving): final order (its blend) | 0.2500 | 0.5000 |" in md
    assert md.index("v3 (new)") < md.index("v2 (serving)") < md.index("| retriever | 0.1000")
