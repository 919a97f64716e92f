"""Can the testbed's LLM learn *when* something was shown from TMRoPE positions alone?

A probe behind docs/testbed.md ("temporal order"): the decoder of `builtin:testbed-omni` (random
init, 4 layers, hidden 128) is trained from scratch on synthetic streams with clean features,
side by side in one run for each setting, and its held-out accuracy is printed every 100 steps.

Stream: 4 "seconds" of G x G visual tokens at the testbed's TMRoPE positions (temporal id
25 per second, height/width ids over the grid): a per-sample background vector plus small noise;
in two random seconds a quarter of the tokens carry one of 6 colour vectors. Then a question of
`--question-tokens` filler ids ending in a "first" or "last" word id, then `tail` fixed ids (the
chat template's end of turn + assistant header is 6 tokens), and the next-token prediction at the
last position is scored over the 6 colour ids: the colour shown first or last.

Settings (all with the same seeds): TMRoPE mrope_section [4, 6, 6] (Qwen2.5-Omni's proportion) vs
[8, 4, 4] (the built-in's since revision 3), with the answer read at the keyword itself (tail 0, as
`answer_format: completion` does), 1 token after it or 6 (the chat template's tail),
and the question start jittered by up to `--jitter` tokens (option lines of different lengths).

    .venv/bin/python benchmarks/temporal_readout.py              # ~15 min on 2 cores
    .venv/bin/python benchmarks/temporal_readout.py --quick      # 200 steps per setting, ~5 min
"""

from __future__ import annotations

import argparse
import time

import torch

from omnimem_train.models import builtin

SECONDS, POS_PER_S, N_COLOURS, DIM = 4, 25, 6, 128
FIRST, LAST = 477, 230  # word ids (any two distinct ids)
TAIL = [2, 10, 1, 11, 12, 10]  # fixed ids after the keyword (end of turn + assistant header)
COLOUR_IDS = torch.tensor([271, 345, 289, 372, 86, 76])


def make_model(mrope_section: list[int]):
    saved = builtin.TESTBED_TEXT
    builtin.TESTBED_TEXT = {**saved, "mrope_section": mrope_section}
    try:
        model, _ = builtin.build_tiny_model("testbed-omni", seed=0)
    finally:
        builtin.TESTBED_TEXT = saved
    return model


def batch(lm, colours, n: int, gen: torch.Generator, grid: int, question_tokens: int, tail: int, jitter: int):
    """-> embeds (n, L, D), positions (3, n, L), target colour (n,)."""
    embeds, positions, targets = [], [], []
    hh, ww = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    st = 4
    for _ in range(n):
        bg = torch.randn(DIM, generator=gen) * 0.05
        shown = torch.randperm(SECONDS, generator=gen)[:2].sort().values.tolist()
        cs = torch.randperm(N_COLOURS, generator=gen)[:2]
        e, p = [], []
        for k in range(SECONDS):
            x = bg.expand(grid * grid, DIM) + torch.randn(grid * grid, DIM, generator=gen) * 0.005
            if k in shown:
                x = x.clone()
                x[: grid * grid // 4] = colours[cs[shown.index(k)]]
            e.append(x)
            p.append(torch.stack([torch.full((grid * grid,), st + POS_PER_S * k), st + hh.flatten(), st + ww.flatten()]))
        first = bool(torch.randint(2, (1,), generator=gen))
        ids = [300 + (7 * i) % 150 for i in range(question_tokens - 1)] + [FIRST if first else LAST] + TAIL[:tail]
        start = st + POS_PER_S * SECONDS + int(torch.randint(jitter + 1, (1,), generator=gen))
        e.append(lm.embed_tokens(torch.tensor(ids)))
        p.append(torch.arange(start, start + len(ids)).expand(3, -1))
        embeds.append(torch.cat(e))
        positions.append(torch.cat(p, 1))
        targets.append(cs[0] if first else cs[1])
    return torch.stack(embeds), torch.stack(positions, 1), torch.stack(targets)


def train_readout(model, make_batch, held_out, steps: int, gen: torch.Generator, log=None) -> list[float]:
    """Train the decoder (AdamW lr 3e-3, batches of 32 from `make_batch(n, gen)` -> embeds (n, L, D),
    positions (3, n, L), target colour (n,)) on the colour predicted at the last position; -> the
    held-out accuracy every 100 steps (`log(step, accuracy, loss)` is called with each)."""
    lm, head = model.model.language_model, model.lm_head
    params = [p for n, p in model.named_parameters() if "language_model" in n or "lm_head" in n]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)

    def logits(emb, pos):
        mask = torch.ones(emb.shape[:2])
        return head(lm(inputs_embeds=emb, position_ids=pos, attention_mask=mask).last_hidden_state[:, -1])[:, COLOUR_IDS]

    accs = []
    for step in range(1, steps + 1):
        emb, pos, tgt = make_batch(32, gen)
        loss = torch.nn.functional.cross_entropy(logits(emb, pos), tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            with torch.no_grad():
                emb, pos, tgt = held_out
                accs.append((logits(emb, pos).argmax(-1) == tgt).float().mean().item())
            if log:
                log(step, accs[-1], loss.item())
    return accs


def run(mrope_section, tail, args) -> list[float]:
    model = make_model(mrope_section)
    lm = model.model.language_model
    gen = torch.Generator().manual_seed(1)
    colours = torch.randn(N_COLOURS, DIM, generator=gen) * 0.05
    shape = dict(grid=args.grid, question_tokens=args.question_tokens, tail=tail, jitter=args.jitter)
    held_out = batch(lm, colours, 256, torch.Generator().manual_seed(999), **shape)
    return train_readout(model, lambda n, g: batch(lm, colours, n, g, **shape), held_out, args.steps, gen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--grid", type=int, default=5, help="visual tokens per second = grid^2")
    parser.add_argument("--question-tokens", type=int, default=12)
    parser.add_argument("--jitter", type=int, default=20, help="max shift of the question's start")
    parser.add_argument("--quick", action="store_true", help="200 steps per setting")
    args = parser.parse_args()
    if args.quick:
        args.steps = 200
    torch.manual_seed(0)
    print(f"held-out accuracy (256 streams; chance 0.50 between the two shown colours) every 100 steps, "
          f"{args.steps} steps x 32, grid {args.grid}x{args.grid}, question {args.question_tokens} tokens, "
          f"jitter {args.jitter}")
    for section in ([4, 6, 6], [8, 4, 4]):
        for tail in (0, 1, 6):
            t0 = time.perf_counter()
            accs = run(section, tail, args)
            where = "at the keyword" if tail == 0 else f"{tail} token{'s' * (tail > 1)} after it"
            print(f"mrope {section}  answer {where:<20} "
                  + " ".join(f"{a:.2f}" for a in accs) + f"   ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
