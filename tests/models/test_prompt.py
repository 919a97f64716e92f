"""The multiple-choice prompt and answer formats: one lettered line per option, the instruction of
the answer format, and the answer text that training targets and inference scores."""

import pytest

from omnimem_train.models.builtin import build_tokenizer
from omnimem_train.models.prompt import (
    ANSWER_FORMATS,
    LETTERS,
    format_question,
    option_text,
    split_chat_prompt,
)

OPTIONS = ["red", "green", "blue", "yellow"]


def test_answer_formats():
    assert ANSWER_FORMATS == ("letter", "option", "cloze", "completion")


@pytest.mark.parametrize("answer_format", ["letter", "option"])
def test_options_are_listed_with_letters(answer_format):
    lines = format_question("What colour?", OPTIONS, answer_format).splitlines()
    assert lines[0] == "What colour?"
    assert lines[1:5] == ["A. red", "B. green", "C. blue", "D. yellow"]
    assert len(lines) == 6


def test_instruction_follows_the_answer_format():
    letter = format_question("Q?", OPTIONS, "letter").splitlines()[-1]
    option = format_question("Q?", OPTIONS, "option").splitlines()[-1]
    assert letter == "Answer with the option's letter."
    assert option == "Answer with the option."
    assert format_question("Q?", OPTIONS) == format_question("Q?", OPTIONS, "letter")  # the default


@pytest.mark.parametrize("answer_format", ANSWER_FORMATS)
def test_open_ended_question_is_unchanged(answer_format):
    assert format_question("Describe it.", None, answer_format) == "Describe it."
    assert format_question("Describe it.", [], answer_format) == "Describe it."


def test_cloze_prompt_is_the_question_alone():
    """Cloze: no option lines and no instruction (the answer follows the question directly); the
    answer is the option's text, as with `option`."""
    assert format_question("Which colour came first?", OPTIONS, "cloze") == "Which colour came first?"
    assert [option_text(OPTIONS, i, "cloze") for i in range(4)] == OPTIONS


def test_completion_prompt_ends_on_the_questions_last_word():
    """Completion: no chat template, no options; the question's closing "?" is dropped so the answer
    is predicted on the question's last word ("first"), right after the stream's text."""
    tok = build_tokenizer()
    question = format_question("Which tone was heard first?", OPTIONS, "completion")
    assert question == "Which tone was heard first"
    assert format_question("  Describe it. ", OPTIONS, "completion") == "Describe it."
    prefix, q_ids = split_chat_prompt(tok, "You are a helpful assistant.", question, "completion")
    assert tok.decode(prefix) == "You are a helpful assistant.\n"
    assert tok.decode(q_ids) == "\nWhich tone was heard first"
    assert tok.decode(q_ids[-1:]) == " first"
    assert split_chat_prompt(tok, "", question, "completion")[0] == []
    chat_prefix, chat_q = split_chat_prompt(tok, "You are a helpful assistant.", question, "cloze")
    assert "<|im_start|>" in tok.decode(chat_prefix) and tok.decode(chat_q).endswith("<|im_start|>assistant\n")
    assert [option_text(OPTIONS, i, "completion") for i in range(4)] == OPTIONS


def test_option_text():
    assert [option_text(OPTIONS, i) for i in range(4)] == ["A. red", "B. green", "C. blue", "D. yellow"]
    assert [option_text(OPTIONS, i, "option") for i in range(4)] == OPTIONS
    assert option_text(OPTIONS, 2, "letter") == f"{LETTERS[2]}. blue"
    # the letter-format answer is exactly the option's line in the prompt
    assert option_text(OPTIONS, 1, "letter") in format_question("Q?", OPTIONS, "option").splitlines()


def test_unknown_format_is_rejected_by_the_prompt():
    with pytest.raises(KeyError, match="bogus"):
        format_question("Q?", OPTIONS, "bogus")
    with pytest.raises(KeyError, match="bogus"):
        format_question("Describe it.", None, "bogus")
