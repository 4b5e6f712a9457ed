"""Sequence math shared by training and retrieval: distances (and the one DistanceSpec that
picks among them), losses, pooling, ranking metrics. Imports nothing from the pipeline stages."""
