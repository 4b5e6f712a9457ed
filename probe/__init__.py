"""Linear and MLP probes on frozen SCAV embeddings (scav-probe)."""
