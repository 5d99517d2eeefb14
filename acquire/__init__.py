"""`mcdrop acquire`: which unlabelled inputs to label next (BALD, BatchBALD, entropy, ...).

acquisition: the per-input scores, BatchBALD's greedy batch, the ranked CSV and JSON.
"""
