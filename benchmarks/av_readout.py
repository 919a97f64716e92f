"""Can the testbed's LLM learn "the square shown while tone F played" from clean features?

A probe behind docs/testbed.md ("audio-visual"), the companion of temporal_readout.py: the decoder
of `builtin:testbed-omni` (random init, 4 layers, hidden 128, TMRoPE [8, 4, 4]) is trained from
scratch on synthetic streams laid out as Qwen2.5-Omni lays out a clip, and its held-out accuracy is
printed every 100 steps.

Stream: 4 "seconds", chunk by chunk (`--chunk` seconds per chunk; Qwen2.5-Omni uses 2): the
chunk's G x G visual tokens per second (temporal id 25 per second, height/width ids over the grid)
then its 25 audio tokens per second (one id each). Visual tokens are a per-sample background
vector plus small noise; in two random seconds a quarter of them carry one of 6 colour vectors.
Audio tokens are a background vector plus noise; one tone (of 5 tone vectors) plays in the second
of one of the squares, another in a second without a square. Then a question of filler ids ending
on the id of the tone that played with a square (`--mode av`), or on one fixed id (`--mode any`:
"the square shown with a tone", the same lookup without naming the tone); the next-token
prediction there is scored over the 6 colour ids.

To answer, an audio token must first take in the square shown at its own time (it comes after
that chunk's visual tokens), and the question must then find that audio token: two hops, where
temporal order needs one.

    .venv/bin/python benchmarks/av_readout.py --steps 600 --chunk 2
    .venv/bin/python benchmarks/av_readout.py --steps 600 --chunk 1 --mode any
"""

from __future__ import annotations

import argparse
import time

import torch
from temporal_readout import DIM, POS_PER_S, make_model, train_readout

SECONDS, N_COLOURS, N_TONES = 4, 6, 5
TONE_IDS = torch.tensor([101, 150, 203, 250, 333])
ANY_TONE_ID = 77


def sample(colours, tones, gen: torch.Generator, grid: int, chunk: int):
    """-> (stream embeds (L, D), positions (3, L), anchor tone index, anchor colour index)."""
    hh, ww = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    st, per_grid = 4, grid * grid
    bg, audio_bg = torch.randn(DIM, generator=gen) * 0.05, torch.randn(DIM, generator=gen) * 0.05
    slots = torch.randperm(SECONDS, generator=gen)[:3].tolist()
    shown, alone = sorted(slots[:2]), slots[2]
    anchor = shown[int(torch.randint(2, (1,), generator=gen))]
    cs, ts = torch.randperm(N_COLOURS, generator=gen)[:2], torch.randperm(N_TONES, generator=gen)[:2]
    embeds, positions = [], []
    for c0 in range(0, SECONDS, chunk):
        for k in range(c0, c0 + chunk):
            x = bg.expand(per_grid, DIM) + torch.randn(per_grid, DIM, generator=gen) * 0.005
            if k in shown:
                x = x.clone()
                x[: per_grid // 4] = colours[cs[shown.index(k)]]
            embeds.append(x)
            positions.append(torch.stack([torch.full((per_grid,), st + POS_PER_S * k), st + hh.flatten(), st + ww.flatten()]))
        a = audio_bg.expand(chunk * POS_PER_S, DIM) + torch.randn(chunk * POS_PER_S, DIM, generator=gen) * 0.005
        for k, tone in ((anchor, ts[0]), (alone, ts[1])):
            if c0 <= k < c0 + chunk:
                a = a.clone()
                a[(k - c0) * POS_PER_S : (k - c0 + 1) * POS_PER_S] += tones[tone]
        embeds.append(a)
        positions.append(torch.arange(st + POS_PER_S * c0, st + POS_PER_S * (c0 + chunk)).expand(3, -1))
    return torch.cat(embeds), torch.cat(positions, 1), int(ts[0]), cs[shown.index(anchor)]


def batch(lm, colours, tones, n: int, gen: torch.Generator, grid: int, chunk: int, mode: str):
    """-> embeds (n, L, D), positions (3, n, L), target colour (n,)."""
    embeds, positions, targets = [], [], []
    for _ in range(n):
        e, p, tone, colour = sample(colours, tones, gen, grid, chunk)
        last = int(TONE_IDS[tone]) if mode == "av" else ANY_TONE_ID
        ids = [300 + (7 * i) % 150 for i in range(11)] + [last]
        start = int(p.max()) + 1 + int(torch.randint(21, (1,), generator=gen))
        embeds.append(torch.cat([e, lm.embed_tokens(torch.tensor(ids))]))
        positions.append(torch.cat([p, torch.arange(start, start + len(ids)).expand(3, -1)], 1))
        targets.append(colour)
    return torch.stack(embeds), torch.stack(positions, 1), torch.stack(targets)


def run(args) -> list[float]:
    model = make_model([8, 4, 4])
    lm = model.model.language_model
    gen = torch.Generator().manual_seed(1)
    colours = torch.randn(N_COLOURS, DIM, generator=gen) * 0.05
    tones = torch.randn(N_TONES, DIM, generator=gen) * 0.05
    shape = dict(grid=args.grid, chunk=args.chunk, mode=args.mode)
    held_out = batch(lm, colours, tones, 256, torch.Generator().manual_seed(999), **shape)
    return train_readout(
        model, lambda n, g: batch(lm, colours, tones, n, g, **shape), held_out, args.steps, gen,
        log=lambda step, acc, loss: print(f"step {step}: held-out {acc:.2f}, train loss {loss:.3f}", flush=True),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--grid", type=int, default=5, help="visual tokens per second = grid^2")
    parser.add_argument("--chunk", type=int, default=2, choices=(1, 2, 4), help="seconds per interleaving chunk")
    parser.add_argument("--mode", choices=("av", "any"), default="av")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"held-out accuracy (256 streams; chance 0.17 over 6 colours, 0.50 between the two shown) every "
          f"100 steps, {args.steps} steps x 32, grid {args.grid}x{args.grid}, chunk {args.chunk} s, mode {args.mode}")
    t0 = time.perf_counter()
    run(args)
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
