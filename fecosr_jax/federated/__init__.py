"""Federated pretraining: client work, server optimisers, and the compiled round."""
