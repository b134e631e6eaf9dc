"""The fine-tuning library: job spec → data → tokenized → Trainer → evaluated model dir.

Nothing here knows the database. `training.spec` is torch-free and shared with the API;
heavy libraries are imported inside the functions that need them.
"""
