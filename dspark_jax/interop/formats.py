"""The public drafter formats dspark-jax writes and reads: DeepSpec's, vLLM's and SGLang's.

    dspark-jax export --drafter dspark --format vllm --out runs/dspark-vllm
    dspark-jax generate --drafter runs/dspark-vllm ...      # any of them loads back, detected from config.json

A format is, per drafter kind, the architecture it is loaded as and what that architecture cannot hold.
Export refuses a drafter the format cannot express exactly, naming each difference; import builds our
drafter of the same kind and fills it, refusing what ours cannot express. The layouts are in
`block_drafter_layout.py` and `eagle3_layout.py`; the sources they were read from in docs/interop.md.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from flax import nnx

from dspark_jax.drafter_kinds import kind_named, kind_of
from dspark_jax.interop import block_drafter_layout as block
from dspark_jax.interop import eagle3_layout as eagle3
from dspark_jax.interop.hf_directory import read_config, read_tensors, write_drafter
from dspark_jax.interop.target_tensors import (
    check_shared,
    draft_offsets,
    draft_vocab_from,
    target_embeddings,
    target_head_rows,
    target_is_draft,
)
from dspark_jax.models.config import ConfigError, ModelConfig
from dspark_jax.models.params import TransformerParams

QWEN3_ARCHITECTURES = (block.DSPARK_ARCHITECTURE, block.DFLASH_ARCHITECTURE, eagle3.QWEN3_ARCHITECTURE)


@dataclasses.dataclass(frozen=True)
class Format:
    name: str
    architectures: dict[str, str]  # drafter kind -> architecture it is written as
    whole_vocab: tuple[str, ...] = ()  # kinds whose architecture here drafts over the whole target vocabulary
    shares_target_embedding: bool = False  # the server embeds draft tokens with the target's own module

    def problems(self, kind: str, config, draft_size: int, target: ModelConfig) -> list[str]:
        """Why a drafter of `kind` cannot be written in this format exactly (empty: it can)."""
        architecture = self.architectures[kind]
        found = []
        if getattr(config, "lookup_inputs", False):
            found.append(f"its slots read prompt lookup's candidates, which {architecture} has no inputs for "
                         "(train without --lookup-inputs)")
        if architecture in QWEN3_ARCHITECTURES and not config.qk_norm:
            found.append(f"it has no per-head q/k RMSNorm, which {architecture} always applies (train with "
                         "--qk-norm)")
        if architecture == eagle3.LLAMA_ARCHITECTURE:
            if config.qk_norm:
                found.append(f"it normalises q and k, which {architecture} has no weights for")
            if len(config.target_layers) != eagle3.LLAMA_FEATURES:
                found.append(f"it fuses {len(config.target_layers)} target layers, {architecture} exactly "
                             f"{eagle3.LLAMA_FEATURES} (train with --num-features 3)")
        if kind in self.whole_vocab and draft_size != target.vocab_size:
            found.append(f"it drafts over {draft_size} of the target's {target.vocab_size} tokens and {self.name}'s "
                         f"{architecture} over all of them (export --format vllm, or train with --draft-vocab 0)")
        if target.final_logit_softcap is not None:
            found.append("the target soft-caps its logits, which no public drafter layout does")
        if self.shares_target_embedding and target.embed_scale != 1.0:
            found.append(f"{self.name} embeds draft tokens with the target's embedding module, and for a "
                         f"{target.family} target (embedding scaled by {target.embed_scale:g}) dspark-jax cannot "
                         "tell from the layout that it scales them as ours does (export --format vllm, which "
                         "ships the scaled embedding)")
        return found


FORMATS = {
    "deepspec": Format("deepspec", {"dspark": block.DSPARK_ARCHITECTURE, "dflash": block.DSPARK_ARCHITECTURE,
                                    "eagle3": eagle3.QWEN3_ARCHITECTURE},
                       whole_vocab=("dspark", "dflash", "eagle3")),
    "vllm": Format("vllm", {"dspark": block.DSPARK_ARCHITECTURE, "dflash": block.DFLASH_ARCHITECTURE,
                            "eagle3": eagle3.LLAMA_ARCHITECTURE}),
    "sglang": Format("sglang", {"dspark": block.DSPARK_ARCHITECTURE, "dflash": block.DFLASH_ARCHITECTURE,
                                "eagle3": eagle3.LLAMA_ARCHITECTURE},
                     whole_vocab=("dspark", "dflash"), shares_target_embedding=True),
}


def export_as(format_name: str, model: nnx.Module, target: ModelConfig, params: TransformerParams, out: Path,
              dtype: str = "float32") -> None:
    """Writes `model` to `out` in the named format; ValueError naming every difference it cannot express."""
    if format_name not in FORMATS:
        raise ValueError(f"unknown --format {format_name!r}; formats are {', '.join(FORMATS)}")
    form, kind = FORMATS[format_name], kind_of(model).name
    if kind not in form.architectures:
        raise ValueError(f"the {format_name} format has no architecture for a {kind} drafter")
    vocab = np.asarray(model.vocab.get_value())
    problems = form.problems(kind, model.config, len(vocab), target)
    if problems:
        raise ValueError(f"this {kind} drafter cannot be written in the {format_name} format exactly: "
                         + "; ".join(problems))
    architecture = form.architectures[kind]
    if kind == "eagle3":
        config = eagle3.export_config(model.config, target, architecture, len(vocab))
        tensors = eagle3.export_tensors(model, architecture)
    else:
        config = block.export_config(model.config, kind, target, architecture, len(vocab))
        tensors = block.export_tensors(model, kind, vocab, target.vocab_size)
    tensors["lm_head.weight"] = target_head_rows(params, vocab)
    if not form.shares_target_embedding:
        tensors["embed_tokens.weight"] = target_embeddings(target, params)
    if len(vocab) != target.vocab_size:
        tensors["d2t"] = draft_offsets(vocab)
        tensors["t2d"] = target_is_draft(vocab, target.vocab_size)
    write_drafter(out, config | {"exported_by": "dspark-jax", "target_family": target.family}, tensors, dtype)


def read_meta(directory: Path) -> dict:
    """The description `_exported` needs of a public-format drafter, in the shape of our `drafter.json`'s:
    kind, config fields, draft vocabulary size, the target vocabulary; from config.json alone."""
    hf = read_config(directory)
    architecture = (hf.get("architectures") or [None])[0]
    source = str(directory)
    if architecture in block.ARCHITECTURES:
        kind, fields = block.read_fields(hf, source)
    elif architecture in eagle3.ARCHITECTURES:
        kind, fields = "eagle3", eagle3.read_fields(hf, architecture, hf.get("num_target_layers", 0), source)
    else:
        known = ", ".join(block.ARCHITECTURES + eagle3.ARCHITECTURES)
        raise ConfigError(f"{directory}/config.json: architecture {architecture!r} is none dspark-jax reads ({known})")
    vocab_size = hf["vocab_size"]
    return {"kind": kind, "drafter": fields, "architecture": architecture,
            "draft_vocab_size": int(hf.get("draft_vocab_size") or vocab_size),
            "target": {"name": hf.get("target_model_name_or_path", "(not recorded)"), "vocab_size": vocab_size}}


def load(directory: Path, target: ModelConfig, params: TransformerParams) -> nnx.Module:
    """Our drafter holding a public-format drafter's weights, checked against the target."""
    meta, source = read_meta(directory), str(directory)
    hf, tensors = read_config(directory), read_tensors(directory)
    kind = kind_named(meta["kind"])
    config = kind.config_type.from_dict(meta["drafter"])
    if config.hidden_size != target.hidden_size or meta["target"]["vocab_size"] != target.vocab_size:
        raise ConfigError(f"{source}: a drafter of hidden size {config.hidden_size} and vocabulary "
                          f"{meta['target']['vocab_size']} cannot draft for this target ({target.hidden_size}, "
                          f"{target.vocab_size})")
    if max(config.target_layers) >= target.num_layers:
        raise ConfigError(f"{source}: it fuses target layer {max(config.target_layers)}, the target has "
                          f"{target.num_layers}")
    draft_ids = draft_vocab_from(tensors, meta["draft_vocab_size"], target.vocab_size)
    check_shared(tensors, target, params, draft_ids, source)
    order = np.argsort(draft_ids, kind="stable")  # ours keeps draft ids sorted by target id
    vocab = draft_ids[order].astype(np.int32)
    model = kind.new_drafter(config, vocab)
    if meta["kind"] == "eagle3":
        eagle3.import_tensors(model, tensors, meta["architecture"], source)
    else:
        block.import_tensors(model, meta["kind"], block.with_draft_order(tensors, order), vocab, hf, source)
    return model
