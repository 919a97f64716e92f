"""Strict weight loading: a checkpoint that leaves a weight of the model class unfilled, holds a tensor
the class does not have, holds one of the wrong shape, or is a truncated file fails with one line
naming the folder (or file) and the first keys; only the documented allow-list passes."""

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from data_prep.synthetic import write_clip
from omnimem_train.commands.cli import main
from omnimem_train.errors import ModelError
from omnimem_train.models.builtin import build_tiny_model, resolve_builtin
from omnimem_train.models.load import load_adapter, load_full_omni

Q_PROJ = "model.layers.0.self_attn.q_proj.weight"  # the saved (checkpoint) name, text LM and thinker alike
IDS = torch.tensor([[1, 2, 3, 4, 5]])


def _copy(name, dst, edit=None):
    """A copy of built-in `name`'s folder, its model.safetensors changed by `edit(state_dict)`."""
    shutil.copytree(resolve_builtin(name)[0], dst)
    if edit is not None:
        f = dst / "model.safetensors"
        state = load_file(str(f))
        edit(state)
        save_file(state, str(f), metadata={"format": "pt"})
    return dst


def _error(path, *needles) -> str:
    with pytest.raises(ModelError) as e:
        load_adapter(str(path), device="cpu")
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-omni"])
def test_a_missing_decoder_tensor_fails_naming_it(name, tmp_path):
    path = _copy(name, tmp_path / "m", lambda s: s.pop(Q_PROJ))
    _error(path, f"{path}: weights: 1 missing tensor", "layers.0.self_attn.q_proj.weight")


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-omni"])
def test_an_unexpected_tensor_fails_naming_it(name, tmp_path):
    path = _copy(name, tmp_path / "m", lambda s: s.update({"model.layers.0.self_attn.extra.weight": torch.ones(2)}))
    _error(path, f"{path}: weights: 1 unexpected tensor", "layers.0.self_attn.extra.weight")


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-omni"])
def test_a_tensor_of_the_wrong_shape_fails_naming_it(name, tmp_path):
    path = _copy(name, tmp_path / "m", lambda s: s.update({Q_PROJ: s[Q_PROJ][:32]}))
    _error(path, f"{path}: weights: 1 tensor of the wrong shape", "layers.0.self_attn.q_proj.weight",
           "(32, 64) in the checkpoint, (64, 64) in the model")


def test_a_renamed_tensor_reports_both_sides(tmp_path):
    path = _copy("tiny-llama", tmp_path / "m", lambda s: s.update({"model.layers.0.self_attn.q.weight": s.pop(Q_PROJ)}))
    _error(path, "1 missing tensor (model.layers.0.self_attn.q_proj.weight)",
           "1 unexpected tensor (model.layers.0.self_attn.q.weight)")


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-omni"])
def test_an_intact_copy_loads_every_weight(name, tmp_path):
    path = _copy(name, tmp_path / "m")
    original = build_tiny_model(name)[0]  # what the built-in folder was saved from
    with torch.no_grad():
        assert torch.equal(load_adapter(str(path), device="cpu").model(input_ids=IDS).logits,
                           original(input_ids=IDS).logits)


# --- the allow-list ----------------------------------------------------------------------------


def test_tied_output_embeddings_need_no_lm_head_tensor(tmp_path):
    model, tok = build_tiny_model("tiny-llama")
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert "lm_head.weight" not in load_file(str(tmp_path / "model.safetensors"))
    ad = load_adapter(str(tmp_path), device="cpu")
    assert ad.model.lm_head.weight is ad.model.model.embed_tokens.weight


def test_an_untied_model_without_lm_head_fails(tmp_path):
    path = _copy("tiny-llama", tmp_path / "m", lambda s: s.pop("lm_head.weight"))
    _error(path, "1 missing tensor (lm_head.weight)")


def test_a_saved_rotary_buffer_is_ignored(tmp_path):
    """Older checkpoints hold rotary `inv_freq` buffers; the model computes them from its config."""
    path = _copy("tiny-llama", tmp_path / "m",
                 lambda s: s.update({"model.layers.0.self_attn.rotary_emb.inv_freq": torch.zeros(8)}))
    load_adapter(str(path), device="cpu")


def test_the_allow_list_on_a_load_report():
    """The allow-list itself (transformers' own report may already leave these keys out)."""
    from types import SimpleNamespace

    from omnimem_train.models.load import _load_problems

    info = {"missing_keys": {"model.rotary_emb.inv_freq", "lm_head.weight"}, "mismatched_keys": set(),
            "unexpected_keys": {"model.layers.0.self_attn.rotary_emb.inv_freq", "talker.codec_head.weight",
                                "token2wav.code2wav_dit_model.proj_out.weight"}}
    tied_thinker = SimpleNamespace(all_tied_weights_keys={"lm_head.weight": "model.embed_tokens.weight"})
    assert _load_problems(tied_thinker, info) == []
    assert _load_problems(SimpleNamespace(has_talker=True), info) == [
        "1 missing tensor (lm_head.weight)",
        "2 unexpected tensors (talker.codec_head.weight, token2wav.code2wav_dit_model.proj_out.weight)"]


@pytest.fixture(scope="module")
def full_omni(tmp_path_factory):
    from tests.export.runs import tiny_full_omni

    return tiny_full_omni(tmp_path_factory.mktemp("full_omni"))


def _copy_full(src, dst, edit):
    shutil.copytree(src, dst)
    f = dst / "model.safetensors"
    state = load_file(str(f))
    edit(state)
    save_file(state, str(f), metadata={"format": "pt"})
    return dst


def test_full_omni_thinker_tensors_are_checked(full_omni, tmp_path):
    path = _copy_full(full_omni, tmp_path / "m", lambda s: s.pop("thinker." + Q_PROJ))
    _error(path, f"{path}: weights: 1 missing tensor", "layers.0.self_attn.q_proj.weight")


def test_full_omni_talker_is_checked_only_where_it_is_built(full_omni, tmp_path):
    path = _copy_full(full_omni, tmp_path / "m", lambda s: s.pop("talker.codec_head.weight"))
    (path / "spk_dict.pt").unlink()  # the talker's voices: unused when only the thinker is built
    load_adapter(str(path), device="cpu")  # the thinker alone: talker/token2wav tensors are not used
    with pytest.raises(ModelError) as e:
        load_full_omni(path)
    assert str(e.value).startswith(f"{path}: weights: 1 missing tensor (talker.codec_head.weight)")


def test_full_omni_with_talker_loads_its_speakers(full_omni):
    full, _ = load_full_omni(full_omni)
    assert full.has_talker and "Chelsie" in full.speaker_map


# --- truncated or corrupt files ----------------------------------------------------------------


def _truncate(f):
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


def test_a_truncated_file_is_named(tmp_path):
    path = _copy("tiny-omni", tmp_path / "m")
    _truncate(path / "model.safetensors")
    _error(path, f"{path / 'model.safetensors'}: corrupted or unreadable safetensors file")


@pytest.fixture(scope="module")
def truncated(tmp_path_factory):
    path = _copy("tiny-omni", tmp_path_factory.mktemp("truncated") / "m")
    _truncate(path / "model.safetensors")
    return path


@pytest.mark.parametrize("command", ["infer", "eval", "train"])
def test_a_truncated_file_is_one_line_through_the_cli(command, truncated, tiny_manifest, tmp_path, capsys):
    out = f"output_dir={tmp_path / 'out'}"
    model = f"model_name_or_path={truncated}"
    argv = {
        "infer": ["infer", "--video", str(write_clip(tmp_path / "clip.mp4", seconds=1.0, width=56, height=56)),
                  "--question", "What?", "device=cpu", model, out],
        "eval": ["eval", "recipes/eval/tiny_omni.yaml", f"eval.manifest={tiny_manifest}", "eval.split=train",
                 "device=cpu", model, out],
        "train": ["train", "recipes/train/tiny_cpu.yaml", f"dataset={tiny_manifest}", "report_to=none", model, out],
    }[command]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {truncated / 'model.safetensors'}: corrupted or unreadable safetensors file"), err
