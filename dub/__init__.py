"""scav-dub: counterfactual-pair pipeline that writes dub-like audio tracks (dubs paper §6)."""
