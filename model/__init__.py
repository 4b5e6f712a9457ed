"""The SCAV model as a library: network, configs, objective, checkpoints, embedding and stored latents.

Every app (train, retrieve, probe, the demo) imports it; it imports no app."""
