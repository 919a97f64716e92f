"""answer_question with multiple choice: each option is scored as it is written in the chosen answer
format ("B. green" or "green"), checked against one plain forward of the whole sequence."""

import pytest
import torch

from omnimem_train.memory.policies.full import FullMemory
from omnimem_train.models.base import MediaInput, Modality
from omnimem_train.models.builtin import build_tiny_model
from omnimem_train.models.prompt import LETTERS, format_question, split_chat_prompt
from omnimem_train.models.text_lm import TextLMAdapter
from omnimem_train.streaming.engine import StreamingEngine
from omnimem_train.streaming.infer import answer_question

OPTIONS = ["a red square", "green", "two blue circles", "yellow"]
CONTEXT = [(Modality.VISUAL, "a red square moves left"), (Modality.AUDIO, "a tone plays"),
           (Modality.VISUAL, "then it stops")]


@pytest.fixture(scope="module")
def llama():
    model, tok = build_tiny_model("tiny-llama", seed=5)
    return model, TextLMAdapter(model, tok)


def _reference_scores(model, tok, answer_format):
    """Sum of log p(option tokens | stream, question) from one full forward per option."""
    prefix, q_ids = split_chat_prompt(tok, "sys", format_question("What is shown?", OPTIONS, answer_format),
                                      answer_format)
    context = [i for _, text in CONTEXT for i in tok(text, add_special_tokens=False)["input_ids"]]
    scores = []
    for i, opt in enumerate(OPTIONS):
        written = f"{LETTERS[i]}. {opt}" if answer_format == "letter" else opt
        o_ids = tok(written, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prefix + context + q_ids + o_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        start = ids.shape[1] - len(o_ids)
        scores.append(float(sum(logp[start - 1 + k, t] for k, t in enumerate(o_ids))))
    return scores


@pytest.mark.parametrize("answer_format", ["letter", "option", "cloze", "completion"])
def test_options_are_scored_in_the_answer_format(llama, answer_format):
    model, ad = llama
    engine = StreamingEngine(ad, FullMemory(), group_size=4)
    result = answer_question(engine, MediaInput(context=list(CONTEXT)), "What is shown?", OPTIONS,
                             system_prompt="sys", answer_format=answer_format)
    ref = _reference_scores(model, ad.tokenizer, answer_format)
    assert result.option_scores == pytest.approx(ref, abs=1e-4)
    best = max(range(len(OPTIONS)), key=ref.__getitem__)
    assert result.choice == LETTERS[best] and result.text == f"{LETTERS[best]}. {OPTIONS[best]}"


def test_the_two_formats_score_different_texts(llama):
    _, ad = llama
    engine = StreamingEngine(ad, FullMemory(), group_size=4)
    scores = {}
    for fmt in ("letter", "option"):
        scores[fmt] = answer_question(engine, MediaInput(context=list(CONTEXT)), "What is shown?", OPTIONS,
                                      system_prompt="sys", answer_format=fmt).option_scores
    assert all(abs(a - b) > 1e-4 for a, b in zip(scores["letter"], scores["option"], strict=True))
    default = answer_question(engine, MediaInput(context=list(CONTEXT)), "What is shown?", OPTIONS,
                              system_prompt="sys").option_scores
    assert default == pytest.approx(scores["letter"], abs=1e-6)


def test_streamed_text_pieces_add_up_to_the_decoded_answer():
    from omnimem_train.models.builtin import build_tokenizer
    from omnimem_train.streaming.answer import iter_text

    tok = build_tokenizer()
    for s in ["green", "A. red", "naïve café ü", "é"]:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        for cut in range(1, len(ids) + 1):  # ending mid-character too
            seen: list[int] = []
            pieces = list(iter_text(tok, iter(ids[:cut]), seen))
            assert "".join(pieces) == tok.decode(ids[:cut], skip_special_tokens=True)
            assert seen == ids[:cut] and all(pieces)
