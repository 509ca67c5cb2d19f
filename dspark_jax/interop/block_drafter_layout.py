"""DSpark and DFlash in the public Qwen3 block-drafter layout (DeepSpec's `Qwen3DSparkModel`, z-lab's and
vLLM's `DFlashDraftModel`), both directions.

Read from DeepSpec's deepspec/modeling/dspark/qwen3/{config,modeling}.py, markov_head.py and common.py, vLLM's
vllm/model_executor/models/qwen3_dflash.py and qwen3_dspark.py, SGLang's python/sglang/srt/models/dflash.py
and dspark.py (docs/interop.md). The architecture is ours layer for layer: `fc` + `hidden_norm` fuse the
target layers, each layer projects that context to keys/values with its own k/v projections (k normalised
like the block's), a block is the anchor plus mask tokens attending to the context before the anchor and
to itself, `norm` ends it. Their attention always normalises q and k per head: our drafters match only with
`qk_norm`. Their Markov head (`vanilla`) is W1 over the whole target vocabulary, W2 over the draft one; ours
keeps W1 rows for draft tokens plus one row for every other token, so export repeats that row and import
requires the non-draft rows to be one row.
"""

from __future__ import annotations

import numpy as np

from dspark_jax.interop.tensor_names import Rename, attention_mlp_renames, export_renamed, import_renamed
from dspark_jax.models.config import ConfigError, ModelConfig
from dspark_jax.models.dflash import DFlashConfig

DSPARK_ARCHITECTURE = "Qwen3DSparkModel"
DFLASH_ARCHITECTURE = "DFlashDraftModel"
ARCHITECTURES = (DSPARK_ARCHITECTURE, DFLASH_ARCHITECTURE)
DEEPSPEC_ANCHORS = 512  # a training field DeepSpec's model requires; its recipe's value


def renames(config: DFlashConfig, kind: str) -> list[Rename]:
    rows = [("fc.weight", "backbone/fuse/kernel", True), ("hidden_norm.weight", "backbone/fuse_norm/scale", False),
            ("norm.weight", "backbone/final_norm/scale", False)]
    for i in range(config.num_layers):
        ours = f"backbone/layers/{i}/"
        rows.append((f"layers.{i}.input_layernorm.weight", f"{ours}attn_norm/scale", False))
        rows += attention_mlp_renames(f"layers.{i}.", ours, config.qk_norm)
    if kind == "dspark":
        rows += [("markov_head.markov_w2.weight", "heads/transition_out/kernel", True),
                 ("confidence_head.proj.weight", "heads/confidence/kernel", True),
                 ("confidence_head.proj.bias", "heads/confidence/bias", False)]
    return rows


def qwen3_fields(config, target: ModelConfig, num_layers: int) -> dict:
    """The Qwen3 config fields every public drafter layout reads (sizes, RoPE, norms)."""
    return {
        "model_type": "qwen3", "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim, "num_hidden_layers": num_layers, "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta, "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "max_position_embeddings": target.max_position, "vocab_size": target.vocab_size, "hidden_act": "silu",
        "attention_bias": False, "tie_word_embeddings": False, "num_target_layers": target.num_layers,
        "layer_types": ["full_attention"] * num_layers,
    }


def export_config(config: DFlashConfig, kind: str, target: ModelConfig, architecture: str, draft_size: int) -> dict:
    layers = list(config.target_layers)
    dspark = kind == "dspark"
    fields = qwen3_fields(config, target, config.num_layers) | {
        "architectures": [architecture], "block_size": config.block_size, "mask_token_id": config.mask_token_id,
        "target_layer_ids": layers, "num_anchors": DEEPSPEC_ANCHORS,
        # vLLM's and SGLang's DFlash read these two from dflash_config; vLLM counts a target layer from its
        # input (+1), hence the explicit aux list
        "dflash_config": {"mask_token_id": config.mask_token_id, "target_layer_ids": layers},
        "eagle_aux_hidden_state_layer_ids": [i + 1 for i in layers],
        "markov_rank": config.markov_rank if dspark else 0, "enable_confidence_head": dspark,
    }
    if dspark:
        fields |= {"markov_head_type": "vanilla", "confidence_head_with_markov": True}
    if draft_size != target.vocab_size:
        fields["draft_vocab_size"] = draft_size
    return fields


def export_tensors(model, kind: str, vocab: np.ndarray, target_vocab_size: int) -> dict[str, np.ndarray]:
    tensors = export_renamed(model, renames(model.config, kind))
    if kind == "dspark":
        rows = np.asarray(model.heads.transition_in.embedding.get_value(), np.float32)  # [Vd + 1, r]
        draft_index = np.full(target_vocab_size, len(vocab))
        draft_index[vocab] = np.arange(len(vocab))
        tensors["markov_head.markov_w1.weight"] = rows[draft_index]
    return tensors


def read_fields(hf: dict, source: str) -> tuple[str, dict]:
    """(kind, our config fields) from a block drafter's config.json; refuses what ours cannot express."""
    dflash_config = hf.get("dflash_config") or {}
    markov_rank = int(hf.get("markov_rank") or 0)
    problems = []
    if hf.get("attention_bias"):
        problems.append("attention biases (attention_bias)")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"activation {hf['hidden_act']!r} (ours is silu)")
    if any(kind != "full_attention" for kind in hf.get("layer_types") or []):
        problems.append("sliding-window layers")
    if markov_rank and str(hf.get("markov_head_type", "vanilla")).lower() != "vanilla":
        problems.append(f"a {hf['markov_head_type']!r} Markov head (ours is DSpark's vanilla W1·W2)")
    if markov_rank and not hf.get("enable_confidence_head"):
        problems.append("a Markov head without a confidence head (every dspark-jax DSpark scores its drafts)")
    if (hf.get("rope_scaling") or {}).get("rope_type", "default") != "default":
        problems.append("scaled RoPE")
    layers = hf.get("target_layer_ids") or dflash_config.get("target_layer_ids")
    if not layers:
        problems.append("no target_layer_ids")
    elif min(layers) < 0:
        problems.append("the target's embedding output as a feature (target layer -1)")
    if problems:
        raise ConfigError(f"{source}: this drafter has {', '.join(problems)}, which dspark-jax's drafters cannot "
                          "express")
    rope = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta") or 1_000_000.0
    fields = dict(
        target_layers=tuple(int(i) for i in layers), hidden_size=hf["hidden_size"],
        num_heads=hf["num_attention_heads"], num_kv_heads=hf.get("num_key_value_heads", hf["num_attention_heads"]),
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"], rope_theta=float(rope), rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        qk_norm=True, mask_token_id=int(hf.get("mask_token_id", dflash_config.get("mask_token_id"))),
        block_size=int(hf.get("block_size") or dflash_config.get("block_size") or 16),
        num_layers=hf["num_hidden_layers"],
    )
    if markov_rank:
        return "dspark", fields | {"markov_rank": markov_rank}
    return "dflash", fields


def import_tensors(model, kind: str, tensors: dict[str, np.ndarray], vocab: np.ndarray, hf: dict,
                   source: str) -> None:
    """Fills `model` (built from `read_fields`) from the file; vocab: the sorted target ids of its draft
    tokens (the file's draft rows already in that order)."""
    config = model.config
    if kind == "dspark":
        rank = config.markov_rank
        if not hf.get("confidence_head_with_markov", True):
            # ours always reads [h ; W1[x]]: zero weights on W1[x] give the same confidence exactly
            weight = tensors["confidence_head.proj.weight"]
            tensors = tensors | {"confidence_head.proj.weight": np.concatenate([weight, np.zeros((1, rank))], -1)}
        w1 = tensors.get("markov_head.markov_w1.weight")
        if w1 is None or w1.shape != (hf["vocab_size"], rank):
            raise ConfigError(f"{source}: markov_head.markov_w1.weight is missing or not [vocab_size, markov_rank]")
        outside = np.ones(len(w1), bool)
        outside[vocab] = False
        other = w1[outside]
        if len(other) and np.any(other != other[0]):
            raise ConfigError(f"{source}: the Markov head embeds tokens outside the draft vocabulary differently; "
                              "dspark-jax's keeps one row for all of them")
        other_row = other[:1] if len(other) else np.zeros((1, rank), np.float32)
        model.heads.transition_in.embedding.set_value(np.concatenate([w1[vocab], other_row]).astype(np.float32))
    import_renamed(model, renames(config, kind), tensors, source)


def with_draft_order(tensors: dict[str, np.ndarray], order: np.ndarray) -> dict[str, np.ndarray]:
    """The file's draft-vocabulary rows permuted by `order` (so the draft ids come out sorted by target id)."""
    rows = ("lm_head.weight", "markov_head.markov_w2.weight")
    return tensors | {name: tensors[name][order] for name in rows if name in tensors}

