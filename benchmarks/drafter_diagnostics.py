"""Why the shipped drafters learn slowly: Gemma 3 270M's scales, and a drafter's per-position agreement.

    .venv/bin/python benchmarks/drafter_diagnostics.py --data runs/data [--drafter dspark]

Prints (1) the target's final-norm multipliers, (2) RMS and mean max |x| of the fused target layers'
outputs over two training sequences, (3) the drafter's top-1 agreement with the target per block position,
teacher-forced on 32 random anchors in each of four training sequences (the training computation, so it
can be compared with the accept rates `dspark-jax eval` measures at inference), (4) how much the training
data holds: response tokens, distinct ones, and how many draft-vocabulary tokens never occur in it.
Results: docs/results.md.
"""

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dspark_jax.drafters import shipped_drafter
from dspark_jax.models.draft_vocab import DraftHead
from dspark_jax.models.drafter_checkpoint import import_drafter
from dspark_jax.models.drafters import KINDS
from dspark_jax.models.eagle3 import Eagle3Drafter
from dspark_jax.models.transformer import embed, logits
from dspark_jax.target import load_target
from dspark_jax.train.blocks import make_blocks, sample_anchors
from dspark_jax.train.drafter_step import target_features
from dspark_jax.train.eagle3_ttt import training_time_test
from dspark_jax.train.regenerate import load_sequences

LENGTH = 384


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True, help="directory written by prepare-data")
    parser.add_argument("--drafter", default="dspark", help="shipped kind or exported drafter directory")
    args = parser.parse_args()
    target = load_target()
    scale = np.asarray(target.params.final_norm)
    print(f"final-norm multipliers: mean {scale.mean():.1f}, max {scale.max():.1f}")

    directory = shipped_drafter(args.drafter) if args.drafter in KINDS else Path(args.drafter)
    model = import_drafter(directory, target.config, target.params)
    all_tokens, all_mask = load_sequences(sorted(args.data.glob("sequences-*.npz")), LENGTH)
    responses = all_tokens[all_mask.astype(bool)]
    unseen = np.setdiff1d(np.asarray(model.vocab.get_value()), responses).size
    print(f"training data: {len(all_tokens)} sequences, {responses.size} response tokens, "
          f"{np.unique(responses).size} distinct; {unseen} of the {model.vocab.get_value().shape[0]} draft "
          "tokens never occur in a response")
    tokens, loss_mask = jnp.asarray(all_tokens[:4]), jnp.asarray(all_mask[:4])
    layers = model.config.target_layers
    features, final_hidden = target_features(target.config, target.params, tokens, layers)
    for layer, f in zip(layers, np.asarray(features[:, :2])):
        rms = np.sqrt((f**2).mean(-1))
        print(f"layer {layer:2d} output: RMS {rms.mean():7.1f}, mean max |x| {np.abs(f).max(-1).mean():8.1f}")

    blocks = make_blocks(tokens, loss_mask, sample_anchors(jax.random.key(0), loss_mask, 32),
                         model.config.block_size, model.config.mask_token_id)
    head = DraftHead.from_target(target.config, target.params, model.vocab.get_value())
    if isinstance(model, Eagle3Drafter):
        draft_logits = jnp.moveaxis(training_time_test(model, target.config, target.params, tokens, features,
                                                       blocks, head), 0, 2)
    else:
        positions = jnp.broadcast_to(jnp.arange(LENGTH), tokens.shape)
        hidden = model.backbone(embed(target.params, blocks.inputs, config=target.config), blocks.positions,
                                model.backbone.context(features, positions), blocks.context_visible)
        draft_logits = head.logits(hidden)
        if model.heads is not None:
            draft_logits, _ = model.heads.teacher_forced(draft_logits, hidden, head.to_draft(blocks.previous))
    source = jnp.take_along_axis(final_hidden[:, None], blocks.source[..., None], axis=2)
    agree = (head.to_target(draft_logits.argmax(-1)) == logits(target.params, source, config=target.config).argmax(-1))
    agree = agree & blocks.valid
    per_position = np.asarray(agree.sum((0, 1)) / jnp.maximum(blocks.valid.sum((0, 1)), 1))
    print("top-1 agreement by block position:", " ".join(f"{a:.2f}" for a in per_position))


if __name__ == "__main__":
    main()
