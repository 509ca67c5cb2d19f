"""Does a drafter use the target's features? Per-position agreement on training and on unseen text.

    .venv/bin/python benchmarks/drafter_diagnostics.py --data data/sharegpt-gemma3-270m [--drafter dspark[,DIR...]]
        [--max-sequences N] [--unseen-prompts 2] [--answer-tokens 64] [--json agreement.json]

Prints
(1) the target's final-norm multipliers, and for each fused target layer the RMS and mean max |x| of its
    outputs, the share of their energy in the 5 largest dimensions and the mean cosine between positions
    (how much of the feature is a direction every position shares);
(2) how much the training data holds: response tokens, distinct ones, draft tokens never seen in it;
(3) the drafter's top-1 agreement with the target per block position, teacher-forced (the training
    computation) on
    - 32 random anchors in each of four training sequences,
    - every anchor of the target's own greedy answers (--answer-tokens long) to unseen prompts (the first
      --unseen-prompts of gsm8k, mt-bench and humaneval): at T = 0 this is what `dspark-jax eval` measures
      as accept rates, without the engine,
    - the same unseen answers with every target feature replaced by its mean over the batch: what the
      drafter predicts from the tokens alone. Agreement equal to the line above means the drafter draws
      nothing from the target's hidden states on unseen text;
    each beside the bigram baseline (`train/bigram.py`: the chain a previous-token table counted on all the
    loaded training responses drafts from the same anchors), and split into anchors on repeated spans (prompt
    lookup finds the last 4 tokens earlier in the text: what the target copies at T = 0) and the others.
Results: docs/results.md.
"""

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dspark_jax.atomic_file import write_atomically
from dspark_jax.drafter_kinds import KINDS, kind_of, load_drafter
from dspark_jax.drafters import shipped_drafter
from dspark_jax.evaluation import load_tasks
from dspark_jax.generate import GenerationConfig, generate
from dspark_jax.models.draft_vocab import DraftHead
from dspark_jax.proposers.base import DraftContext
from dspark_jax.proposers.ngram import NgramProposer
from dspark_jax.target import Target, load_target
from dspark_jax.train.bigram import bigram_chain, bigram_table
from dspark_jax.train.blocks import at_positions, make_blocks, sample_anchors
from dspark_jax.train.drafter_step import target_features, target_statistics
from dspark_jax.train.regenerate import load_sequences
from dspark_jax.tree import TreeTemplate

LENGTH = 384
UNSEEN_TASKS = ("gsm8k", "mt-bench", "humaneval")


def agreement_by_position(target: Target, model, tokens: jax.Array, loss_mask: jax.Array, anchors: jax.Array,
                          features: jax.Array, final_hidden: jax.Array, bigram: np.ndarray) -> dict[str, np.ndarray]:
    """Teacher-forced top-1 agreement with the target at each block position, float[γ] per line: the
    drafter's; the bigram chain's from the same anchors; the drafter's at anchors where prompt lookup finds
    the last `max_ngram` tokens earlier in the text (repeated spans) and at the others.
    tokens, loss_mask: [B, T]; anchors: int32[B, N]; features [K, B, T, E] and final_hidden [B, T, E] from
    `target_features` (features may be ablated); bigram: `bigram_table` of the training data."""
    blocks = make_blocks(tokens, loss_mask, anchors, model.config.depth)
    head = DraftHead.from_target(target.config, target.params, model.vocab.get_value())
    draft_logits, _ = kind_of(model).teacher_forced(model, target.config, target.params, tokens, features, blocks, head)
    source = at_positions(final_hidden, blocks.source)
    choices = target_statistics(target.config, target.params, source, blocks.valid).greedy  # chunked: no [.., V]
    chain = bigram_chain(bigram, np.asarray(blocks.previous[..., 0]), model.config.depth)
    drafted = head.to_target(draft_logits.argmax(-1)) == choices
    repeated = lookup_match_length(tokens, anchors) == NgramProposer().max_ngram  # [B, N]
    rate = lambda agree, where: np.asarray((agree & where).sum((0, 1)) / jnp.maximum(where.sum((0, 1)), 1))
    share = float(jnp.sum(repeated[..., None] & blocks.valid) / jnp.maximum(jnp.sum(blocks.valid), 1))
    return {"drafter": rate(drafted, blocks.valid), "bigram chain": rate(jnp.asarray(chain) == choices, blocks.valid),
            f"drafter on repeated spans ({share:.0%} of slots)": rate(drafted, blocks.valid & repeated[..., None]),
            "drafter elsewhere": rate(drafted, blocks.valid & ~repeated[..., None])}


def lookup_match_length(tokens: jax.Array, anchors: jax.Array) -> jax.Array:
    """int32[B, N]: how many tokens ending at each anchor `NgramProposer.lookup` finds earlier in the row."""
    batch, count = anchors.shape
    history = jnp.repeat(tokens, count, axis=0)
    context = DraftContext(history=history, length=anchors.reshape(-1) + 1, done=jnp.zeros(batch * count, bool))
    _, match = NgramProposer().lookup(context, TreeTemplate(1, 1))
    return match.reshape(batch, count)


def greedy_answers(target: Target, prompts_per_task: int, answer_tokens: int
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(tokens [B, T], loss_mask [B, T], anchors [B, N]): the target's greedy answers to unseen prompts, with
    every answer position whose next token is also in the answer as an anchor."""
    tokenizer = target.tokenizer
    prompts = [tokenizer.encode(tokenizer.chat_prompt(p))
               for task in load_tasks(list(UNSEEN_TASKS), limit=prompts_per_task) for p in task.prompts]
    answers = generate(target.params, target.config, prompts, GenerationConfig(max_new_tokens=answer_tokens))
    width = max(len(p) + len(a) for p, a in zip(prompts, answers))
    tokens, loss_mask = np.zeros((len(prompts), width), np.int32), np.zeros((len(prompts), width), np.int32)
    anchors = np.zeros((len(prompts), answer_tokens - 1), np.int32)
    for row, (prompt, answer) in enumerate(zip(prompts, answers)):
        tokens[row, : len(prompt) + len(answer)] = prompt + answer
        loss_mask[row, len(prompt): len(prompt) + len(answer)] = 1
        # an anchor past a short answer's end gets no valid slot (make_blocks masks it)
        anchors[row] = len(prompt) - 1 + np.arange(answer_tokens - 1)
    return jnp.asarray(tokens), jnp.asarray(loss_mask), jnp.asarray(anchors)


def print_feature_scales(target: Target, layers: tuple[int, ...], features: jax.Array) -> None:
    """features: [K, T, E] of one sequence."""
    scale = np.asarray(target.params.final_norm)
    print(f"final-norm multipliers: mean {scale.mean():.1f}, max {scale.max():.1f}")
    for layer, f in zip(layers, np.asarray(features, np.float32)):
        energy = np.sort((f**2).mean(0))[::-1]
        unit = f / np.linalg.norm(f, axis=-1, keepdims=True)
        cosine = (unit @ unit.T)[np.triu_indices(len(f), 1)].mean()
        print(f"layer {layer:2d} output: RMS {np.sqrt((f**2).mean(-1)).mean():7.1f}, mean max |x| "
              f"{np.abs(f).max(-1).mean():8.1f}, 5 largest dims hold {energy[:5].sum() / energy.sum():.2f} of "
              f"the energy, mean cosine between positions {cosine:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True, help="directory written by prepare-data")
    parser.add_argument("--drafter", default="dspark",
                        help="comma-separated shipped kinds or exported drafter directories, diagnosed on the "
                             "same training rows and unseen answers")
    parser.add_argument("--max-sequences", type=int, default=None, help="the first N training sequences")
    parser.add_argument("--unseen-prompts", type=int, default=2, help="unseen prompts per task")
    parser.add_argument("--answer-tokens", type=int, default=64, help="greedy tokens per unseen answer")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write every agreement line here: {drafter: {line: [rate per slot]}}")
    args = parser.parse_args()
    target = load_target()
    names = args.drafter.split(",")
    models = {name: load_drafter(shipped_drafter(name) if name in KINDS else Path(name), target.config, target.params)
              for name in names}
    all_tokens, all_mask = load_sequences(sorted(args.data.glob("sequences-*.npz")), LENGTH, args.max_sequences)
    tokens, loss_mask = jnp.asarray(all_tokens[:4]), jnp.asarray(all_mask[:4])
    responses = all_tokens[all_mask.astype(bool)]
    bigram = bigram_table(all_tokens, all_mask, target.config.vocab_size)
    answers = greedy_answers(target, args.unseen_prompts, args.answer_tokens)
    report: dict[str, dict[str, list[float]]] = {}
    for name, model in models.items():
        print(f"== {name}")
        layers = model.config.target_layers
        features, final_hidden = target_features(target.config, target.params, tokens, layers)
        print_feature_scales(target, layers, features[:, 0])
        unseen = np.setdiff1d(np.asarray(model.vocab.get_value()), responses).size
        print(f"training data: {len(all_tokens)} sequences, {responses.size} response tokens, "
              f"{np.unique(responses).size} distinct; {unseen} of the {model.vocab.get_value().shape[0]} draft "
              "tokens never occur in a response")

        def show(text, rates):
            for who, r in rates.items():
                print(f"top-1 agreement by block position, {text}, {who}:", " ".join(f"{x:.2f}" for x in r))
                report.setdefault(name, {})[f"{text}, {who}"] = [float(x) for x in r]

        show("training sequences", agreement_by_position(target, model, tokens, loss_mask,
                                                          sample_anchors(jax.random.key(0), loss_mask, 32),
                                                          features, final_hidden, bigram))
        features, final_hidden = target_features(target.config, target.params, answers[0], layers)
        show("unseen greedy answers", agreement_by_position(target, model, *answers, features, final_hidden, bigram))
        ablated = jnp.broadcast_to(features.mean(axis=(1, 2), keepdims=True), features.shape)
        show("unseen greedy answers, features ablated",
             agreement_by_position(target, model, *answers, ablated, final_hidden, bigram))
    if args.json is not None:
        write_atomically(args.json, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1) + "\n"))


if __name__ == "__main__":
    main()
