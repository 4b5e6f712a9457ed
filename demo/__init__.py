"""The demos: the whole pipeline on synthetic benchmarks built for each paper (``python -m scav.demo``)."""
