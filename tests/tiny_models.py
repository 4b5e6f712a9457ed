"""Tiny randomly initialised CLIP / BEATs checkpoints, so tests run the real code paths offline.

Both are saved exactly the way the released weights are: a Hugging Face model
directory for CLIP, an official-format ``{'cfg': dict, 'model': state_dict}``
file for BEATs (same architecture family: deep norm, gated relative position
bias, fine-tuned head; only the sizes shrink, the 16x16 patches over 128 mel
bins stay so the 8-patch stacking holds).
"""

from __future__ import annotations

from pathlib import Path

TINY_CLIP_HIDDEN = 32
TINY_CLIP_IMAGE = 32
TINY_BEATS_HIDDEN = 32

TINY_BEATS_CFG = {
    "input_patch_size": 16,
    "embed_dim": 24,  # != encoder_embed_dim, so post_extract_proj is exercised as in the release
    "conv_bias": False,
    "encoder_layers": 2,
    "encoder_embed_dim": TINY_BEATS_HIDDEN,
    "encoder_ffn_embed_dim": 64,
    "encoder_attention_heads": 4,
    "activation_fn": "gelu",
    "layer_wise_gradient_decay_ratio": 0.6,
    "layer_norm_first": False,
    "deep_norm": True,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.05,  # as released: outputs change run to run unless eval()
    "dropout_input": 0.0,
    "conv_pos": 16,
    "conv_pos_groups": 4,
    "relative_position_embedding": True,
    "num_buckets": 32,
    "max_distance": 64,
    "gru_rel_pos": True,
    "finetuned_model": True,  # carries a classifier head, like BEATs_iter3_plus_AS2M.pt
    "predictor_dropout": 0.0,
    "predictor_class": 5,
}


def make_tiny_clip_dir(tmp_path: str | Path, full_model: bool = False, seed: int = 0) -> Path:
    """Save a tiny random CLIP vision tower + matching image processor; return the directory.

    full_model=True saves a whole ``CLIPModel`` (text tower too), like the
    openai/clip-vit-base-patch32 repository, from which the vision tower must load.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

    try:
        import torchvision  # noqa: F401

        from transformers import CLIPImageProcessor as Processor
    except ImportError:
        from transformers import CLIPImageProcessorPil as Processor

    out = Path(tmp_path) / ("tiny-clip-full" if full_model else "tiny-clip")
    torch.manual_seed(seed)
    vision = dict(
        hidden_size=TINY_CLIP_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=TINY_CLIP_IMAGE,
        patch_size=8,
    )
    if full_model:
        cfg = CLIPConfig(
            text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64),
            vision_config=vision,
            projection_dim=8,
        )
        model = CLIPModel(cfg)
    else:
        model = CLIPVisionModel(CLIPVisionConfig(**vision))
    model.eval().save_pretrained(out)
    Processor(
        size={"shortest_edge": TINY_CLIP_IMAGE},
        crop_size={"height": TINY_CLIP_IMAGE, "width": TINY_CLIP_IMAGE},
    ).save_pretrained(out)
    return out


def make_tiny_beats_ckpt(tmp_path: str | Path, seed: int = 0, name: str = "tiny_beats.pt") -> Path:
    """Save a tiny random BEATs checkpoint in the official format; return the file path."""
    import torch
    from unittest import mock

    import speechbrain.lobes.models.beats as sb_beats

    torch.manual_seed(seed)
    # speechbrain's BEATs only takes a config from a checkpoint file; to build a fresh
    # random model of a given config, hand its constructor that config directly.
    real_cfg_cls = sb_beats.BEATsConfig
    with mock.patch.object(sb_beats, "BEATsConfig", lambda cfg=None: real_cfg_cls(dict(TINY_BEATS_CFG))):
        model = sb_beats.BEATs(ckp_path=None, freeze=True)
    # random init leaves LayerNorm at identity and biases at 0; perturb everything so a
    # wrong weight mapping could not go unnoticed
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = Path(tmp_path) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"cfg": dict(TINY_BEATS_CFG), "model": model.state_dict()}, path)
    return path
