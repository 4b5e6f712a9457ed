"""SCAV: sequential contrastive audio-visual learning.

The pipeline stages live in subpackages that never import back up the pipeline:
``scav.core`` (cache schema and reader) <- ``scav.extract`` (writes the cache),
``scav.train`` (reads it) <- ``scav.retrieve`` (reads it and a trained model).
"""

__version__ = "0.1.0"
