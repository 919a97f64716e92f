"""One meaning of a relative budget: `memory.budget_fraction: f` is a fixed per-layer audio+visual
budget of f x the sample's own exact audio+visual token count, resolved by `budgets.fraction_budget`
alike in evaluation, `infer`, training and the live session (and unlike `compression_ratio`, whose
memory grows with the stream)."""

import dataclasses

import pytest
import torch

from data_prep.tiny_qa import make_tiny_qa
from omnimem_train.config.schema import Config, MediaConfig, MemoryConfig
from omnimem_train.data.manifest import read_manifest
from omnimem_train.errors import ConfigError
from omnimem_train.eval.grid import Cell, run_cell
from omnimem_train.memory.budgets import MEDIA, fraction_budget, stream_counts
from omnimem_train.memory.registry import build_policy
from omnimem_train.models.base import Modality
from omnimem_train.models.prompt import question_prompt
from omnimem_train.streaming.engine import StreamingEngine
from omnimem_train.streaming.infer import answer_question
from omnimem_train.streaming.inputs import media_input
from omnimem_train.streaming.session import StreamSession
from omnimem_train.train.objective import Example, StreamingObjective

FRACTION, GROUP = 0.25, 32
MEMORY = MemoryConfig(scorer="omnimem", budget_fraction=FRACTION, group_size=GROUP)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_tiny_qa(tmp_path_factory.mktemp("bf"), num=1, seconds=3.0, size=56, split="test")


@pytest.fixture(scope="module")
def sample(manifest):
    return read_manifest(manifest)[0]


def _exact(adapter, sample):
    """The sample's exact audio/visual token counts, by materialising its stream."""
    media, _ = media_input(adapter, MediaConfig(), video=sample.video)
    prefix, _ = question_prompt(adapter.tokenizer, "", sample.question, sample.options, "letter")
    with torch.no_grad():
        return stream_counts(list(adapter.stream(media, prefix)))


def _media_per_layer(report):
    return [layer.audio + layer.visual for layer in report.layers]


def test_train_eval_infer_and_session_resolve_the_same_budget(tiny_omni, manifest, sample, tmp_path):
    ad, n_layers = tiny_omni, len(tiny_omni.decoder_layers)
    counts = _exact(ad, sample)
    want = fraction_budget(FRACTION, counts)
    assert 0 < want < sum(counts[m] for m in MEDIA)  # the budget binds on this stream

    # infer: the engine materialises and counts the stream, the policy resolves the budget from it
    engine = StreamingEngine(ad, build_policy(MEMORY, n_layers), GROUP)
    media, _ = media_input(ad, MediaConfig(), video=sample.video)
    result = answer_question(engine, media, sample.question, sample.options)
    audio = round(want / 6)  # split visual:audio by rho = 5
    assert engine.policy.budgets.per_layer == ((audio, want - audio),) * n_layers
    kept = min(audio, counts[Modality.AUDIO]) + min(want - audio, counts[Modality.VISUAL])
    assert _media_per_layer(result.report) == [kept] * n_layers  # the budget, where the modality has enough

    # eval: a grid cell records the per-layer budget of each sample
    cfg = Config(memory=MEMORY, output_dir=str(tmp_path / "eval"), device="cpu")
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, manifest=str(manifest), split="test"))
    metrics = run_cell(ad, cfg, Cell("omnimem", budget_fraction=FRACTION, allocation="uniform"), [sample])
    rec = (tmp_path / "eval" / "cells" / "omnimem-f0.25-uniform" / "predictions.jsonl").read_text()
    assert f'"budget": {float(want)}' in rec and metrics["n"] == 1

    # train: the objective streams each example under the same resolution
    answer = f"{sample.answer}. {sample.options['ABCD'.index(sample.answer)]}"
    objective = StreamingObjective(ad.model, ad, StreamingEngine(ad, build_policy(MEMORY, n_layers), GROUP),
                                   MediaConfig(), "", checkpoint=False)
    objective([Example(sample.video, None, sample.question, sample.options, answer)])
    assert objective.engine.policy.budgets.mean_total() == want
    assert _media_per_layer(objective.last_reports[0]) == [kept] * n_layers

    # the live session: told the planned stream's size, it resolves the same number
    session = StreamSession(StreamingEngine(ad, build_policy(MEMORY, n_layers), GROUP), MediaConfig(),
                            stream_tokens=sum(counts.values()))
    assert session.policy.budgets.mean_total() == want
    with pytest.raises(ConfigError, match="memory.budget_fraction: a live session does not know"):
        StreamSession(StreamingEngine(ad, build_policy(MEMORY, n_layers), GROUP), MediaConfig())


def test_budget_fraction_is_fixed_while_compression_ratio_grows(tiny_omni, sample):
    """Per group, the retained media tokens: budget_fraction keeps min(seen, B) with B fixed from the
    start; compression_ratio keeps (1 - r) x what has been seen so far, so it grows to B at the end."""
    ad, n_layers = tiny_omni, len(tiny_omni.decoder_layers)
    counts = _exact(ad, sample)
    want = fraction_budget(FRACTION, counts)

    def per_group(memory):
        engine = StreamingEngine(ad, build_policy(memory, n_layers), GROUP)
        media, _ = media_input(ad, MediaConfig(), video=sample.video)
        prefix, _ = question_prompt(ad.tokenizer, "", sample.question, sample.options, "letter")
        seen = []
        with torch.no_grad():
            pieces = engine.start_stream(ad.stream(media, prefix), media.expected_tokens)
            engine.prefill(pieces, on_group=lambda st, n: seen.append(
                (sum(st.seen.values()), _media_per_layer(st.report())[0])))
        return seen

    pooled = dataclasses.replace(MEMORY, modality_aware=False)  # one pooled budget: no per-modality caps
    fixed = per_group(pooled)
    growing = per_group(dataclasses.replace(pooled, budget_fraction=None, compression_ratio=1 - FRACTION))
    assert [kept for _, kept in fixed] == [min(s, want) for s, _ in fixed]
    assert [kept for _, kept in growing] == [int(s * FRACTION) for s, _ in growing]
    early = next(i for i, (s, _) in enumerate(fixed) if s >= want)
    assert fixed[early][1] == want and growing[early][1] < want  # 1/4 of what was seen, not 1/4 of the stream
