"""Tiny randomly initialised CLIP / BEATs checkpoints, so tests run the real code paths offline.

Both are saved exactly the way the released weights are: a Hugging Face model
directory for CLIP, an official-format ``{'cfg': dict, 'model': state_dict}``
file for BEATs (same architecture family: deep norm, gated relative position
bias; only the sizes shrink, the 16x16 patches over 128 mel bins stay so the
8-patch stacking holds). BEATs comes in both released variants: ``finetuned``
(cfg ``finetuned_model=True`` and a ``predictor`` classifier head, like the
paper's BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt) and ``pretrained``
(no head, like the self-supervised BEATs_iter3_plus_AS2M.pt).

``make_full_clip_dir`` / ``make_full_beats_ckpt`` build random-weight models of the
released sizes (CLIP ViT-B/32, BEATs iter3) the same way, for benches.
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
    "finetuned_model": True,  # a classifier head, like ..._finetuned_on_AS2M_cpt2.pt (527 classes there)
    "predictor_dropout": 0.0,
    "predictor_class": 5,
}
# the self-supervised checkpoint's cfg (BEATs_iter3_plus_AS2M.pt): no head
TINY_BEATS_PRETRAINED_CFG = {
    k: v for k, v in TINY_BEATS_CFG.items() if k not in ("predictor_dropout", "predictor_class")
} | {"finetuned_model": False}


# the released architectures, for benches (random weights; sizes as in the published configs)
CLIP_B32_VISION = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=32
)
BEATS_ITER3_CFG = TINY_BEATS_CFG | {
    "embed_dim": 512,
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "num_buckets": 320,
    "max_distance": 800,
    "predictor_class": 527,
}


def make_full_clip_dir(tmp_path: str | Path, seed: int = 0) -> Path:
    """A random-weight CLIP ViT-B/32 vision tower (~88 M parameters) with the released image
    processor settings (shortest edge 224, crop 224x224): for benches and parity checks."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    out = Path(tmp_path) / "clip-vit-b32-random"
    torch.manual_seed(seed)
    CLIPVisionModel(CLIPVisionConfig(**CLIP_B32_VISION)).eval().save_pretrained(out)
    _processor_cls()().save_pretrained(out)  # defaults = openai/clip-vit-base-patch32's preprocessor_config
    return out


def _processor_cls():
    try:
        from transformers import CLIPImageProcessorPil as Processor  # the backend SCAV pins
    except ImportError:  # transformers 4
        from transformers import CLIPImageProcessor as Processor
    return Processor


def make_tiny_clip_dir(tmp_path: str | Path, full_model: bool = False, seed: int = 0) -> Path:
    """Save a tiny random CLIP vision tower + matching image processor; return the directory.

    full_model=True saves a whole ``CLIPModel`` (text tower too), like the
    openai/clip-vit-base-patch32 repository, from which the vision tower must load.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

    try:
        from transformers import CLIPImageProcessorPil as Processor  # the backend SCAV pins
    except ImportError:  # transformers 4
        from transformers import CLIPImageProcessor as Processor

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


def make_tiny_beats_ckpt(
    tmp_path: str | Path, seed: int = 0, name: str = "tiny_beats.pt", variant: str = "finetuned"
) -> Path:
    """Save a tiny random BEATs checkpoint in the official format; return the file path.

    ``variant``: ``"finetuned"`` (cfg finetuned_model, ``predictor.*`` head weights) or
    ``"pretrained"`` (no head). With the same seed, both share every encoder weight, so
    their hidden states must be equal once the head is discarded.
    """
    cfg = {"finetuned": TINY_BEATS_CFG, "pretrained": TINY_BEATS_PRETRAINED_CFG}[variant]
    return _random_beats_ckpt(TINY_BEATS_CFG, cfg, tmp_path, seed, name, variant)


def make_full_beats_ckpt(tmp_path: str | Path, seed: int = 0, name: str = "beats_iter3_random.pt") -> Path:
    """A random-weight BEATs of the released iter3+ AS2M fine-tuned architecture (~90 M parameters,
    ~360 MB on disk) in the official format: for benches, where the cost of the real model matters."""
    return _random_beats_ckpt(BEATS_ITER3_CFG, BEATS_ITER3_CFG, tmp_path, seed, name, "finetuned")


def _random_beats_ckpt(build_cfg: dict, cfg: dict, tmp_path, seed: int, name: str, variant: str) -> Path:
    import torch
    from unittest import mock

    import speechbrain.lobes.models.beats as sb_beats

    torch.manual_seed(seed)
    # speechbrain's BEATs only takes a config from a checkpoint file; to build a fresh
    # random model of a given config, hand its constructor that config directly.
    real_cfg_cls = sb_beats.BEATsConfig
    with mock.patch.object(sb_beats, "BEATsConfig", lambda _=None: real_cfg_cls(dict(build_cfg))):
        model = sb_beats.BEATs(ckp_path=None, freeze=True)
    # random init leaves LayerNorm at identity and biases at 0; perturb everything so a
    # wrong weight mapping could not go unnoticed
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = Path(tmp_path) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if variant == "pretrained":  # same encoder weights, no head
        state = {k: v for k, v in state.items() if not k.startswith("predictor.")}
    ckpt = {"cfg": dict(cfg), "model": state}
    if variant == "finetuned":  # the released fine-tuned files also map class index -> AudioSet label
        ckpt["label_dict"] = {i: f"/m/tiny{i}" for i in range(cfg["predictor_class"])}
    torch.save(ckpt, path)
    return path


def make_fake_hf_cache(hub: str | Path, repo_id: str, folder: str | Path, commit: str = "0" * 40) -> Path:
    """Lay ``folder``'s files out as the Hugging Face hub cache does after ``hf download repo_id``.

    ``hub/models--owner--name/{blobs/<sha256>, snapshots/<commit>/<file> -> ../../blobs/<sha256>,
    refs/main = <commit>}``; point HF_HUB_CACHE at ``hub``. Returns the snapshot folder.
    """
    import hashlib
    import os
    import shutil

    repo = Path(hub) / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for f in sorted(Path(folder).iterdir()):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, repo / "blobs" / digest)
        os.symlink(os.path.join("..", "..", "blobs", digest), snap / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap
