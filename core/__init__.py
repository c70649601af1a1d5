"""GAS core: search space, GGM, latency tables, search, derivation, genotype, retraining, FPS.

Plain PyTorch: imports no web, queue or database code.
"""
