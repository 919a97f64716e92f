"""Budget calibration (METHOD §4): exact-total allocation, the collector's statistics against a
naive reference, and `omnimem-train calibrate` end to end on the tiny model."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omnimem_train.commands.cli import main
from omnimem_train.memory.budgets import read_budget_file
from omnimem_train.memory.calibrate import (
    MODALITIES,
    CalibrationCollector,
    CalibrationStats,
    allocate,
    layer_scores,
    write_budget_file,
)
from omnimem_train.memory.context import LayerContext
from omnimem_train.memory.layer_memory import LayerMemory
from omnimem_train.memory.plots import plot_budgets
from omnimem_train.memory.registry import make_policy
from omnimem_train.models.base import MediaInput, Modality
from omnimem_train.models.prompt import split_chat_prompt
from omnimem_train.streaming.engine import StreamingEngine

A, V, T = int(Modality.AUDIO), int(Modality.VISUAL), int(Modality.TEXT)


def _stats(e_audio, e_visual, e_all, c_audio, c_visual, c_all=None):
    n = len(e_all)
    return CalibrationStats({"audio": list(e_audio), "visual": list(e_visual), "all": list(e_all)},
                            {"audio": list(c_audio), "visual": list(c_visual), "all": list(c_all or [0.5] * n)})


def _uniform_stats(n, e=0.9, ca=0.8, cv=0.9):
    return _stats([e] * n, [e] * n, [e] * n, [ca] * n, [cv] * n)


# --- allocation ------------------------------------------------------------------------------


@pytest.mark.parametrize("total", [0, 1, 3, 7, 100, 2048, 8192 * 28, 10**9])
@pytest.mark.parametrize("temperature", [0.01, 0.2, 1.0, 50.0])
def test_allocate_sums_exactly_to_total(total, temperature):
    rng = np.random.default_rng(total % 97)
    n = 28
    s = _stats(rng.uniform(0, 1, n), rng.uniform(0, 1, n), rng.uniform(0, 1, n), rng.uniform(-1, 1, n),
               rng.uniform(-1, 1, n))
    layers = allocate(s, total, temperature, 5.0)
    assert len(layers) == n and sum(a + v for a, v in layers) == total
    assert all(isinstance(x, int) and x >= 0 for pair in layers for x in pair)


_maybe = lambda lo, hi: st.one_of(st.none(), st.floats(lo, hi))  # noqa: E731


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 40),
    total=st.integers(0, 10**7),
    temperature=st.floats(1e-3, 100.0),
    rho=st.floats(0.05, 50.0),
)
def test_allocate_property(data, n, total, temperature, rho):
    cols = {k: data.draw(st.lists(_maybe(lo, hi), min_size=n, max_size=n), label=k)
            for k, lo, hi in [("ea", 0, 1), ("ev", 0, 1), ("eall", 0, 1), ("ca", -1, 1), ("cv", -1, 1)]}
    s = _stats(cols["ea"], cols["ev"], cols["eall"], cols["ca"], cols["cv"])
    layers = allocate(s, total, temperature, rho)
    assert len(layers) == n
    assert sum(a + v for a, v in layers) == total
    assert all(isinstance(x, int) and x >= 0 for pair in layers for x in pair)
    g = [(x["all"] or 0.0) for x in layer_scores(s)]  # a larger g_all never gets a smaller layer budget
    b = [a + v for a, v in layers]
    for i in range(n):
        for j in range(n):
            if g[i] / temperature > g[j] / temperature + 1e-9:
                assert b[i] >= b[j], (g, b)


def test_higher_g_all_gets_more():
    n = 6
    e_all = [0.2, 0.9, 0.5, 0.95, 0.1, 0.6]
    s = _stats([0.8] * n, [0.8] * n, e_all, [0.7] * n, [0.8] * n)
    b = [a + v for a, v in allocate(s, 6000, 0.2, 5.0)]
    assert sorted(range(n), key=e_all.__getitem__) == sorted(range(n), key=b.__getitem__)
    flat = [a + v for a, v in allocate(s, 6000, 100.0, 5.0)]  # high T flattens towards uniform
    assert max(flat) - min(flat) < max(b) - min(b) and max(flat) - min(flat) <= 0.02 * 1000


def test_allocate_matches_the_formulas():
    s = _stats([0.5, 0.7], [0.9, 0.4], [0.8, 0.6], [0.75, 0.91], [0.96, 0.51])
    total, temp, rho = 10_000, 0.2, 5.0
    ra, rv = [0.25, 0.09], [0.04, 0.49]
    g_all = [e * math.sqrt((x + y) / 2) for e, x, y in zip([0.8, 0.6], ra, rv)]
    z = sum(math.exp(g / temp) for g in g_all)
    layers = allocate(s, total, temp, rho)
    for i, (a, v) in enumerate(layers):
        b = total * math.exp(g_all[i] / temp) / z
        ga, gv = [0.5, 0.7][i] * math.sqrt(ra[i]), [0.9, 0.4][i] * math.sqrt(rv[i])
        assert abs((a + v) - b) < 1
        assert abs(a - (a + v) * ga / (ga + rho * gv)) <= 0.5
    assert layer_scores(s)[0]["all"] == pytest.approx(g_all[0])


def test_rho_shifts_the_split():
    s = _uniform_stats(4)
    audio = [sum(a for a, _ in allocate(s, 40_000, 0.2, rho)) for rho in (0.5, 1, 5, 20)]
    assert audio == sorted(audio, reverse=True) and len(set(audio)) == 4
    # equal g_a and g_v: the split is exactly the prior, audio = B/(1+ρ)
    s = _stats([0.5] * 4, [0.5] * 4, [0.5] * 4, [0.6] * 4, [0.6] * 4)
    assert allocate(s, 4 * 600, 0.2, 5.0) == [[100, 500]] * 4


def test_unmeasured_modality_falls_back_to_the_prior():
    s = _stats([None] * 3, [0.9] * 3, [0.9] * 3, [None] * 3, [0.8] * 3)  # a video-only calibration
    assert allocate(s, 3 * 120, 0.2, 5.0) == [[20, 100]] * 3
    nothing = _stats([None] * 2, [None] * 2, [None] * 2, [None] * 2, [None] * 2)
    assert allocate(nothing, 13, 0.2, 1.0) == [[4, 3], [3, 3]]  # uniform layers, 1:1 split


def test_allocate_bad_arguments():
    for bad in [dict(total=-1), dict(total=1.5), dict(temperature=0.0), dict(rho=-1.0)]:
        kw = dict(total=10, temperature=0.2, rho=5.0) | bad
        with pytest.raises(ValueError):
            allocate(_uniform_stats(2), **kw)


def test_budget_file_round_trip_and_plot(tmp_path):
    layers = [[3, 10], [0, 0], [7, 1]]
    path = write_budget_file(tmp_path / "sub" / "b.json", layers,
                             {"total": 21, "stats": [{"layer": 0, "x": None}], "model": "m"})
    assert read_budget_file(path, 3) == ((3, 10), (0, 0), (7, 1))
    data = json.loads(path.read_text())
    assert data["total"] == 21 and data["stats"][0]["x"] is None
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]  # no temp file left behind
    png = plot_budgets(layers, tmp_path / "b.png", "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the collector ---------------------------------------------------------------------------


def _naive(groups, n_heads, n_kv):
    """Reference E_m, c_m for one layer over a list of (keys (1,G,n,d), queries (H,L,d), modality (n,),
    hidden_new (L,D)) of one stream, computed query by query and pair by pair."""
    ent = {m: [] for m in MODALITIES}
    cos = {m: [] for m in MODALITIES}
    sel = {"audio": (A,), "visual": (V,), "all": (A, V)}
    all_mod, all_hidden = [], []
    for keys, queries, modality, hidden in groups:
        n, L = keys.shape[2], queries.shape[1]
        n_old = n - L
        rep = keys[0].repeat_interleave(n_heads // n_kv, dim=0).double()  # (H, n, d)
        for j in range(L):
            logits = (queries[:, j].double()[:, None, :] * rep).sum(-1).mean(0) / math.sqrt(keys.shape[-1])
            for m in MODALITIES:
                vis = [k for k in range(n_old + j + 1) if int(modality[k]) in sel[m]]
                if len(vis) < 2:
                    continue
                p = torch.softmax(logits[vis], 0)
                ent[m].append(float(-(p * p.log()).sum()) / math.log(len(vis)))
        all_mod += modality[n_old:].tolist()
        all_hidden.append(hidden)
    hid = torch.cat(all_hidden).double()
    for m in MODALITIES:
        idx = [k for k, x in enumerate(all_mod) if x in sel[m]]
        for a, b in zip(idx[:-1], idx[1:]):
            cos[m].append(float(torch.nn.functional.cosine_similarity(hid[a], hid[b], dim=0)))
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {m: mean(v) for m, v in ent.items()}, {m: mean(v) for m, v in cos.items()}


def test_collector_matches_a_naive_reference():
    torch.manual_seed(0)
    H, G, d, D = 4, 2, 8, 16
    mods = torch.tensor([T, T, V, V, A, T, V, A, A, V, V, A, T, V, A, V, V, A, A, V])
    hidden = torch.randn(len(mods), D)
    keys = torch.randn(1, G, len(mods), d)
    cuts = [0, 7, 8, 20]  # three groups, one of a single token
    col = CalibrationCollector(n_layers=1, query_block=3)
    groups = []
    for g0, g1 in zip(cuts[:-1], cuts[1:]):
        q = torch.randn(H, g1 - g0, d)
        cand = LayerMemory(keys[:, :, :g1], keys[:, :, :g1].clone(), torch.zeros(1, g1, dtype=torch.long),
                           mods[:g1], torch.arange(g1))
        out = col.update(LayerContext(0, cand, g1 - g0, {}, hidden[g0:g1], lambda q=q: q))
        assert out is cand  # keeps everything
        groups.append((keys[:, :, :g1], q, mods[:g1], hidden[g0:g1]))
    got = col.stats()
    ent, cos = _naive(groups, H, G)
    for m in MODALITIES:
        assert got.entropy[m][0] == pytest.approx(ent[m], abs=1e-6), m
        assert got.cosine[m][0] == pytest.approx(cos[m], abs=1e-9), m
    assert got.samples == 1 and got.tokens == {"text": 4, "audio": 7, "visual": 9}


def _pieces(ad, seconds=6.0, seed=0, audio=True):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (int(seconds * 2), 112, 112, 3), dtype=np.uint8)
    mel = rng.standard_normal((128, int(seconds * 100))).astype(np.float32) if audio else None
    prefix, _ = split_chat_prompt(ad.tokenizer, "You watch.", "")
    media = MediaInput(frames=iter(frames), fps=2.0, mel_windows=iter([mel]) if audio else None, duration_s=seconds)
    with torch.no_grad():
        return list(ad.stream(media, prefix))


def _collect(ad, pieces, group_size, streams=1):
    col = CalibrationCollector(len(ad.decoder_layers), query_block=64)
    engine = StreamingEngine(ad, col, group_size=group_size)
    with torch.no_grad():
        for _ in range(streams):
            engine.prefill(iter(pieces))
    return col.stats()


def test_collector_on_a_tiny_stream(tiny_omni):
    ad = tiny_omni
    pieces = _pieces(ad)
    small = _collect(ad, pieces, group_size=64)
    n = len(ad.decoder_layers)
    assert small.n_layers == n and small.samples == 1
    assert small.tokens == {"text": int(sum((p.modality == T).sum() for p in pieces)), "audio": 150, "visual": 96}
    for m in MODALITIES:
        assert all(e is not None and math.isfinite(e) and 0.0 <= e <= 1.0 for e in small.entropy[m])
        assert all(c is not None and math.isfinite(c) and -1.0 <= c <= 1.0 for c in small.cosine[m])
    # Full memory makes streaming exact: the statistics do not depend on the grouping.
    one = _collect(ad, pieces, group_size=100_000)
    for m in MODALITIES:
        assert one.entropy[m] == pytest.approx(small.entropy[m], abs=1e-5)
        assert one.cosine[m] == pytest.approx(small.cosine[m], abs=1e-5)
    # Two streams of the same sample: same means, no pair joins the end of one to the start of the next.
    twice = _collect(ad, pieces, group_size=64, streams=2)
    assert twice.samples == 2
    for m in MODALITIES:
        assert twice.cosine[m] == pytest.approx(small.cosine[m], abs=1e-9)
        assert twice.entropy[m] == pytest.approx(small.entropy[m], abs=1e-9)


def test_collector_video_only_stream(tiny_omni):
    stats = _collect(tiny_omni, _pieces(tiny_omni, audio=False), group_size=64)
    assert all(e is None for e in stats.entropy["audio"]) and all(c is None for c in stats.cosine["audio"])
    assert all(e is not None for e in stats.entropy["visual"])
    layers = allocate(stats, 600, 0.2, 5.0)
    assert sum(map(sum, layers)) == 600


# --- omnimem-train calibrate -----------------------------------------------------------------


def test_calibrate_cli_end_to_end(tmp_path, capsys):
    code = main(["calibrate", "recipes/calibrate/tiny_omni.yaml", f"output_dir={tmp_path}"])
    out, err = capsys.readouterr()
    assert code == 0, err
    path = tmp_path / "budgets.json"
    layers = read_budget_file(path, 4)
    assert sum(a + v for a, v in layers) == 512
    data = json.loads(path.read_text())
    assert (data["total"], data["temperature"], data["rho"], data["samples"]) == (512, 0.2, 5.0, 2)
    assert len(data["stats"]) == 4 and data["model"] == "builtin:tiny-omni"
    png = (tmp_path / "budgets.png").read_bytes()
    assert len(png) > 1000 and png[:4] == b"\x89PNG"
    assert (tmp_path / "config.yaml").exists()
    table = out.splitlines()
    assert table[0].split()[:2] == ["layer", "E_aud"] and table[5].split()[0] == "sum"
    assert table[5].split()[-1] == "512" and str(path) in out
    # the file drives streaming as memory.budget_file
    policy = make_policy("omnimem", 4, budget_file=str(path))
    assert [(lim.audio, lim.visual) for lim in policy.budgets.static_limits()] == list(layers)


def test_calibrate_total_from_memory_budget_and_own_output(tmp_path, capsys):
    out_file = tmp_path / "x" / "b.json"
    code = main(["calibrate", "recipes/calibrate/tiny_omni.yaml", f"output_dir={tmp_path}", "calibration.total=null",
                 "memory.budget=100", "calibration.num_samples=1", "calibration.clip_seconds=2",
                 f"calibration.output={out_file}"])
    assert code == 0, capsys.readouterr().err
    assert sum(map(sum, read_budget_file(out_file, 4))) == 400
    assert (tmp_path / "x" / "b.png").stat().st_size > 0


def test_calibrate_missing_total_is_one_line_error(tmp_path, capsys):
    code = main(["calibrate", "recipes/calibrate/tiny_omni.yaml", f"output_dir={tmp_path}", "calibration.total=null"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: calibration.total") and "memory.budget" in err
    assert not (tmp_path / "budgets.json").exists()


def test_calibrate_unreadable_inputs(tmp_path, capsys):
    missing = tmp_path / "nope.mp4"
    code = main(["calibrate", "recipes/calibrate/tiny_omni.yaml", f"output_dir={tmp_path}",
                 f"calibration.inputs=[{missing}]"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1] == "error: none of the 1 calibration inputs could be read"
    assert any(line.startswith("warning:") and str(missing) in line for line in lines)


def test_calibrate_text_lm_with_context_files(tmp_path, capsys):
    ctx = tmp_path / "ctx.txt"
    ctx.write_text("text: [0s]\nvisual: a red square moves left\naudio: a tone\nvisual: the square turns green\n"
                   "audio: a louder tone\nvisual: a blue circle appears\n")
    argv = ["calibrate", "model_name_or_path=builtin:tiny-llama", "memory.budget=10", f"output_dir={tmp_path}"]
    assert main([*argv, f"calibration.inputs=[{ctx}]"]) == 0, capsys.readouterr().err
    assert sum(map(sum, read_budget_file(tmp_path / "budgets.json", 4))) == 40
    capsys.readouterr()
    assert main([*argv, f"calibration.inputs=[{ctx},{tmp_path / 'a.wav'}]"]) == 2
    assert "text-only LM" in capsys.readouterr().err
