"""How long do prompt-lookup drafts survive, by the length of the match they came from?

    .venv/bin/python benchmarks/ngram_acceptance.py --data data/sharegpt-gemma3-270m-greedy --max-shards 10

At every response position of the data's sequences (the target's own answers), `NgramProposer.lookup` drafts
a γ-token chain from the text so far; a draft token counts as accepted while it and all before it equal the
text's next tokens, which is what greedy verification accepts when the data is the target's greedy output.
Prints, per match length (0 = none found), the share of positions, the mean accepted length and
P(token d accepted) for d = 1..γ: the table `proposers/hybrid.py` (NGRAM_SURVIVAL) weighs n-gram drafts by.
No model is run.
"""

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dspark_jax.proposers.base import DraftContext
from dspark_jax.proposers.ngram import NgramProposer
from dspark_jax.train.regenerate import load_sequences
from dspark_jax.tree import TreeTemplate

LENGTH = 384  # prepare-data's 192 prompt + 192 answer tokens


def accepted_by_match_length(tokens: np.ndarray, response: np.ndarray, proposer: NgramProposer,
                             depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(match length, accepted draft tokens), int[N] each, over the response positions of every row whose
    whole γ-token continuation is in the data (so a short tail does not count as a miss).
    tokens: int32[R, T]; response: bool[R, T], the response tokens (load_sequences' loss mask)."""
    template = TreeTemplate(1, depth)

    @jax.jit
    def one_row(row: jax.Array, anchors: jax.Array):
        history = jnp.broadcast_to(row, (anchors.shape[0], row.shape[0]))
        context = DraftContext(history=history, length=anchors + 1, done=jnp.zeros(anchors.shape, bool))
        draft, match = proposer.lookup(context, template)
        truth = jnp.take_along_axis(history, jnp.clip(anchors[:, None] + 1 + jnp.arange(depth), 0,
                                                      row.shape[0] - 1), axis=1)
        agree = (draft[:, :, 0] == truth) & (anchors[:, None] + 1 + jnp.arange(depth) < row.shape[0])
        return match, jnp.sum(jnp.cumprod(agree, axis=1), axis=1)

    matches, accepted = [], []
    for row, mask in zip(tokens, response):
        anchors = np.nonzero(mask[:-depth] & mask[depth:])[0].astype(np.int32)
        if len(anchors) == 0:
            continue
        bucket = 1 << int(np.ceil(np.log2(len(anchors))))  # few shapes, few compilations
        match, count = one_row(jnp.asarray(row), jnp.asarray(np.pad(anchors, (0, bucket - len(anchors)),
                                                                    constant_values=anchors[-1])))
        matches.append(np.asarray(match)[: len(anchors)])
        accepted.append(np.asarray(count)[: len(anchors)])
    return np.concatenate(matches), np.concatenate(accepted)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a prepare-data directory of target answers")
    parser.add_argument("--max-shards", type=int, default=10)
    parser.add_argument("--gamma", type=int, default=7)
    args = parser.parse_args()
    shards = sorted(args.data.glob("sequences-*.npz"))[: args.max_shards]
    if not shards:
        raise SystemExit(f"no sequences-*.npz shards in {args.data}: run `dspark-jax prepare-data --out {args.data}`")
    proposer = NgramProposer()
    tokens, response = load_sequences(shards, LENGTH)
    match, accepted = accepted_by_match_length(tokens, response, proposer, args.gamma)
    print(f"{len(shards)} shards, {len(match)} response positions, gamma {args.gamma}")
    print("| match length | share | mean accepted | " + " | ".join(f"P(d={d})" for d in range(1, args.gamma + 1))
          + " |")
    print("|---" * (3 + args.gamma) + "|")
    survival = []
    for n in range(proposer.max_ngram + 1):
        counts = accepted[match == n]
        if len(counts) == 0:
            continue
        by_depth = [float(np.mean(counts >= d)) for d in range(1, args.gamma + 1)]
        if n > 0:
            survival.append(tuple(round(p, 3) for p in by_depth))
        print(f"| {n} | {len(counts) / len(match):.3f} | {counts.mean():.2f} | "
              + " | ".join(f"{p:.3f}" for p in by_depth) + " |")
    print("NGRAM_SURVIVAL =", tuple(survival))


if __name__ == "__main__":
    main()
