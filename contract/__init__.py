"""What serving and training share, so nothing drifts between them: the item type, the model
spec and manifest, the text renderer, the pair tokenizer, the score calibration.

Depends on no other package of the project; ``tests/unit/test_layering.py`` holds that."""
