"""collate: manifest rows -> training examples whose answers are written in the answer format
(the same text `streaming.infer` scores and `Sample.answer_text` gives)."""

import pytest

from omnimem_train.data import Sample, to_dataset
from omnimem_train.models.prompt import option_text
from omnimem_train.train.trainer import collate


def _samples():
    return [
        Sample(id="mc", video="/v/a.mp4", duration=4.0, question="What colour?",
               options=["red", "green", "blue", "yellow"], answer="C", question_type="colour"),
        Sample(id="open", video=None, duration=3.0, question="Say hi", options=[], answer="hello there",
               question_type="open", extra={"context": "/ctx/a.txt"}),
    ]


def _rows(samples):
    ds = to_dataset(samples)
    return [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize(("answer_format", "target"), [("letter", "C. blue"), ("option", "blue"), ("cloze", "blue"),
                                                    ("completion", "blue")])
def test_collate_writes_answers_in_the_format(answer_format, target):
    samples = _samples()
    mc, open_ended = collate(_rows(samples), answer_format)
    assert mc.answer == target == samples[0].answer_text(answer_format)
    assert mc.answer == option_text(samples[0].options, samples[0].answer_index, answer_format)
    assert (mc.video, mc.audio, mc.question, mc.options, mc.context) == (
        "/v/a.mp4", None, "What colour?", ["red", "green", "blue", "yellow"], None)
    assert open_ended.answer == "hello there" and open_ended.options == []  # free text: unchanged
    assert open_ended.context == "/ctx/a.txt" and open_ended.video is None


def test_collate_defaults_to_letters():
    mc, _ = collate(_rows(_samples()))
    assert mc.answer == "C. blue"


def test_only_the_main_process_writes_the_model(tmp_path):
    """Under DeepSpeed every rank calls `_save`; a rank that is not the main process writes nothing
    (its own ZeRO-3 state would hold 0-element placeholders and race the gathered tensors)."""
    from types import SimpleNamespace

    from omnimem_train.train.trainer import StreamingTrainer

    other_rank = SimpleNamespace(args=SimpleNamespace(should_save=False, output_dir=str(tmp_path / "run")))
    StreamingTrainer._save(other_rank, str(tmp_path / "run" / "checkpoint-1"))
    assert not (tmp_path / "run").exists()
