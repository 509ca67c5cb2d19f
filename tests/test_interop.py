"""DeepSpec / vLLM / SGLang drafter formats: export then import gives back the same drafter (so the same
drafts), a checkpoint hand-built in DeepSpec's layout (names and shapes from its modeling code, bfloat16
as its trainer saves) loads and drafts losslessly, and whatever a format cannot express is refused by name."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.flax import load_file as load_jax
from safetensors.flax import save_file as save_jax

from dspark_jax import cli, drafter_files
from dspark_jax.drafter_kinds import KINDS, drafter_proposer, new_drafter, stored_config
from dspark_jax.drafters import shipped_drafter
from dspark_jax.generate import GenerationConfig, generate
from dspark_jax.interop.formats import FORMATS, export_as
from dspark_jax.models.config import ConfigError
from dspark_jax.speculative import SpeculativeMethod, speculative_generate
from dspark_jax.target import describe_target, load_target
from dspark_jax.tree import TreeTemplate

TINY_QWEN3 = str(Path(__file__).parent / "data" / "tiny" / "qwen3")
TARGET = load_target(TINY_QWEN3, weights="xla")
PROMPTS = [[5, 6, 7, 8, 5, 6, 7], [9, 3, 4]]


def _randomised(model: nnx.Module, seed: int) -> nnx.Module:
    """Every parameter random (fresh drafters have zero and one-valued tensors a wrong mapping would hide in)."""
    state = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    nnx.update(model, jax.tree.unflatten(tree, [jax.random.normal(k, x.shape) * 0.3 for k, x in zip(keys, leaves)]))
    return model


def _drafts(model: nnx.Module):
    proposer, params = drafter_proposer(TARGET.config, model, TARGET.params)
    generation = GenerationConfig(max_new_tokens=12)
    return speculative_generate(TARGET.params, TARGET.config, PROMPTS, generation,
                                SpeculativeMethod(proposer, params, TreeTemplate(1, 4)))


CASES = [  # (kind, format, drafter options, draft vocabulary or None for the whole one)
    ("dspark", "deepspec", dict(markov_rank=8, qk_norm=True, num_layers=2), None),
    ("dspark", "vllm", dict(markov_rank=8, qk_norm=True), np.array([0, 1, 2, 4, 9, 30, 77, 200])),
    ("dspark", "sglang", dict(markov_rank=8, qk_norm=True), None),
    ("dflash", "deepspec", dict(qk_norm=True), None),
    ("dflash", "vllm", dict(qk_norm=True, num_layers=2), np.array([0, 2, 3, 5, 8, 13, 21])),
    ("eagle3", "vllm", dict(target_layers=(0, 1, 2)), np.array([1, 2, 3, 5, 200])),
    ("eagle3", "sglang", dict(target_layers=(0, 1, 2)), None),
    ("eagle3", "deepspec", dict(qk_norm=True), None),
]


@pytest.mark.parametrize("kind, form, options, vocab", CASES, ids=[f"{k}-{f}" for k, f, _, _ in CASES])
def test_export_then_import_is_the_same_drafter(tmp_path, kind, form, options, vocab):
    model = _randomised(new_drafter(kind, TARGET.config, vocab, seed=1, depth=4, num_features=2, **options), 7)
    if kind == "dspark" and vocab is None:  # the "other token" row is never read with the whole vocabulary
        row = model.heads.transition_in.embedding
        row.set_value(row.get_value().at[-1].set(0.0))
    export_as(form, model, TARGET.config, TARGET.params, tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == [FORMATS[form].architectures[kind]]

    loaded = drafter_files.load(tmp_path, TARGET.config, TARGET.params)
    assert type(loaded) is type(model) and loaded.config == model.config
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(loaded))):
        np.testing.assert_array_equal(a, b)
    original, reloaded = _drafts(model), _drafts(loaded)
    assert reloaded.tokens == original.tokens == generate(TARGET.params, TARGET.config, PROMPTS,
                                                          GenerationConfig(max_new_tokens=12))
    np.testing.assert_array_equal(reloaded.stats.accepted, original.stats.accepted)
    np.testing.assert_array_equal(reloaded.stats.confidence, original.stats.confidence)


def _deepspec_checkpoint(directory: Path, block_size=4, rank=8, layers=(0, 2)) -> None:
    """A DSpark drafter as DeepSpec's Qwen3DSparkModel.save_pretrained writes it for this target: its config
    from build_draft_config (the target's config deep-copied, then the draft fields), its state dict's names
    and shapes, bfloat16, embedding and head copied from the target."""
    hf = json.loads((Path(TINY_QWEN3) / "config.json").read_text())
    hf |= {"architectures": ["Qwen3DSparkModel"], "num_target_layers": hf["num_hidden_layers"],
           "num_hidden_layers": 1, "block_size": block_size, "tie_word_embeddings": False,
           "layer_types": ["full_attention"], "mask_token_id": 3, "target_layer_ids": list(layers),
           "num_anchors": 512, "enable_confidence_head": True, "confidence_head_with_markov": True,
           "markov_rank": rank, "markov_head_type": "vanilla"}
    e, h, kv, d, f, v = (hf["hidden_size"], hf["num_attention_heads"], hf["num_key_value_heads"], hf["head_dim"],
                         hf["intermediate_size"], hf["vocab_size"])
    shapes = {"fc.weight": (e, len(layers) * e), "hidden_norm.weight": (e,), "norm.weight": (e,),
              "layers.0.input_layernorm.weight": (e,), "layers.0.post_attention_layernorm.weight": (e,),
              "layers.0.self_attn.q_proj.weight": (h * d, e), "layers.0.self_attn.k_proj.weight": (kv * d, e),
              "layers.0.self_attn.v_proj.weight": (kv * d, e), "layers.0.self_attn.o_proj.weight": (e, h * d),
              "layers.0.self_attn.q_norm.weight": (d,), "layers.0.self_attn.k_norm.weight": (d,),
              "layers.0.mlp.gate_proj.weight": (f, e), "layers.0.mlp.up_proj.weight": (f, e),
              "layers.0.mlp.down_proj.weight": (e, f), "markov_head.markov_w1.weight": (v, rank),
              "markov_head.markov_w2.weight": (v, rank), "confidence_head.proj.weight": (1, e + rank),
              "confidence_head.proj.bias": (1,)}
    keys = jax.random.split(jax.random.key(3), len(shapes))
    tensors = {name: (jax.random.normal(key, shape) * 0.2).astype(jnp.bfloat16)
               for key, (name, shape) in zip(keys, shapes.items())}
    embedding = jnp.asarray(TARGET.params.embed, jnp.bfloat16)  # tied: the head is the embedding
    tensors |= {"embed_tokens.weight": embedding, "lm_head.weight": embedding}
    directory.mkdir(parents=True, exist_ok=True)
    save_jax(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(hf))


def test_a_deepspec_checkpoint_loads_and_drafts(tmp_path, capsys):
    _deepspec_checkpoint(tmp_path)
    model = drafter_files.load(tmp_path, TARGET.config, TARGET.params)
    assert stored_config(drafter_files.read_meta(tmp_path))[0].name == "dspark"
    assert model.config.qk_norm and model.config.block_size == 4 and model.config.target_layers == (0, 2)
    assert model.config.mask_token_id == 3 and model.vocab.get_value().shape == (TARGET.config.vocab_size,)
    result = _drafts(model)
    assert result.tokens == generate(TARGET.params, TARGET.config, PROMPTS, GenerationConfig(max_new_tokens=12))

    cli.main(["generate", "--target", TINY_QWEN3, "--prompt", "hello", "--max-new-tokens", "6", "--drafter",
              str(tmp_path)])
    drafted = capsys.readouterr()
    cli.main(["generate", "--target", TINY_QWEN3, "--prompt", "hello", "--max-new-tokens", "6", "--drafter", "none"])
    assert drafted.out == capsys.readouterr().out and "tau" in drafted.err


def test_a_checkpoint_with_its_own_head_is_refused(tmp_path):
    _deepspec_checkpoint(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_jax(str(path))
    tensors["lm_head.weight"] = tensors["lm_head.weight"] * 2
    save_jax(tensors, str(path))
    with pytest.raises(ConfigError, match="lm_head.weight is not the target's"):
        drafter_files.load(tmp_path, TARGET.config, TARGET.params)


def test_what_ours_cannot_express_is_refused_on_import(tmp_path):
    _deepspec_checkpoint(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"markov_head_type": "rnn"}))
    with pytest.raises(ConfigError, match="'rnn' Markov head"):
        drafter_files.read_meta(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config | {"architectures": ["Qwen3ForCausalLM"]}))
    with pytest.raises(ConfigError, match="architecture 'Qwen3ForCausalLM' is none dspark-jax reads"):
        drafter_files.read_meta(tmp_path)


@pytest.mark.parametrize("kind, form, expected", [
    ("dspark", "vllm", "no per-head q/k RMSNorm"),
    ("dflash", "deepspec", "no per-head q/k RMSNorm"),
    ("eagle3", "vllm", "normalises q and k"),
    ("eagle3", "deepspec", "drafts over 4 of the target's 256 tokens"),
    ("dspark", "sglang", "drafts over 4 of the target's 256 tokens"),
])
def test_what_a_format_cannot_express_is_refused_on_export(tmp_path, kind, form, expected):
    options = {"dspark": dict(markov_rank=4), "dflash": {}, "eagle3": dict(target_layers=(0, 1, 2))}[kind]
    qk_norm = {("eagle3", "vllm"): True, ("eagle3", "deepspec"): True, ("dspark", "sglang"): True}.get((kind, form),
                                                                                                       False)
    model = new_drafter(kind, TARGET.config, np.array([1, 2, 3, 4]), depth=3, qk_norm=qk_norm, **options)
    with pytest.raises(ValueError, match=expected):
        export_as(form, model, TARGET.config, TARGET.params, tmp_path)
    assert not list(tmp_path.iterdir())  # refused before anything is written


def test_every_shipped_drafter_exports_where_its_format_can_hold_it(tmp_path, capsys):
    """The real target: each shipped drafter in each format is written and reads back identical, or is refused
    before the target loads with the reasons named (the shipped DSpark and DFlash have no q/k norm, so only
    EAGLE-3 goes to vLLM; SGLang would embed Gemma's draft tokens with an unknown scale)."""
    spec = describe_target()
    expressible = []
    for kind in KINDS:
        directory = shipped_drafter(kind)
        meta = drafter_files.read_meta(directory)
        config = stored_config(meta)[1]
        for form in FORMATS.values():
            if not form.problems(kind, config, meta["draft_vocab_size"], spec.config):
                expressible.append((kind, form.name))
            else:
                with pytest.raises(SystemExit):
                    cli.main(["export", "--drafter", kind, "--format", form.name, "--out", str(tmp_path / "refused")])
                assert "cannot be written in the" in capsys.readouterr().err
    assert expressible == [("eagle3", "vllm")]
    out = tmp_path / "eagle3-vllm"
    cli.main(["export", "--drafter", "eagle3", "--format", "vllm", "--out", str(out), "--dtype", "float16"])
    target = load_target(spec, weights="xla")
    shipped = drafter_files.load(shipped_drafter("eagle3"), target.config, target.params)
    loaded = drafter_files.load(out, target.config, target.params)
    assert loaded.config == shipped.config
    for a, b in zip(jax.tree.leaves(nnx.state(shipped)), jax.tree.leaves(nnx.state(loaded))):
        np.testing.assert_array_equal(a, b)  # float16 weights written as float16: exact


def test_a_drafter_trained_with_qk_norm_exports_to_deepspec(tmp_path, capsys):
    tiny_gemma = str(Path(TINY_QWEN3).parent / "gemma3")
    data, run, out = tmp_path / "data", tmp_path / "run", tmp_path / "deepspec"
    cli.main(["prepare-data", "--target", tiny_gemma, "--out", str(data), "--num-prompts", "4", "--max-prompt-tokens",
              "80", "--max-new-tokens", "8", "--shard-size", "4", "--batch-size", "4"])
    cli.main(["train", "--drafter", "dspark", "--target", tiny_gemma, "--data", str(data), "--out", str(run),
              "--length", "96", "--num-features", "2", "--steps", "2", "--batch-size", "2", "--block-size", "3",
              "--rank", "4", "--draft-vocab", "0", "--qk-norm"])
    cli.main(["export", "--drafter", str(run / "drafter"), "--format", "deepspec", "--out", str(out),
              "--target", tiny_gemma])
    assert "dspark as Qwen3DSparkModel (deepspec)" in capsys.readouterr().err
    target = load_target(tiny_gemma, weights="xla")
    trained = drafter_files.load(run / "drafter", target.config, target.params)
    exported = drafter_files.load(out, target.config, target.params)
    assert exported.config == trained.config and trained.config.qk_norm
    np.testing.assert_array_equal(exported.backbone.layers[0].q_norm.scale.get_value(),
                                  trained.backbone.layers[0].q_norm.scale.get_value())


def test_the_command_line_lists_every_format():
    from dspark_jax.command_names import DRAFTER_FORMATS
    assert DRAFTER_FORMATS == tuple(FORMATS)
