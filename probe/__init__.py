"""Linear and MLP probes on frozen SCAV embeddings (scav-probe).

Usage (a cache whose clips carry labels, splits train / val / test)::

    scav-probe --cache features.zarr --checkpoint runs/x/averaged.pt --modality audio
    scav-probe --cache features.zarr --checkpoint runs/x/averaged.pt --modality both --probe mlp \\
        --val-split valid --audio-track spa --json probe.json

Each clip becomes its mean-pooled latent (video, audio or both concatenated, as retrieval's
agg); the probe is fitted on train (features standardised with train statistics, cosine lr),
the epoch with the best val top-1 is kept, and test top-1 / mAP are reported.
Library: :func:`scav.probe.train_probe.fit_probe` / :func:`~scav.probe.train_probe.evaluate`
on any (N, D) tensors; :func:`scav.probe.pipeline.run` for a :class:`~scav.probe.config.ProbeConfig`.
"""
