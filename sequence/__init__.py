"""Sequence math shared by training and retrieval: distances, losses, pooling."""
