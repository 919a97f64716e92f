"""Chat-template prompts split around the media: (prefix before the stream, question after it).

The model's own chat template is rendered with a sentinel where the media goes, then split, so
any template (Qwen2.5-Omni's, SmolLM2's) places the stream exactly where a user turn's video would
be and the question plus the assistant header after it.
"""

from __future__ import annotations

from omnimem_train.config.schema import ANSWER_FORMATS

_SENTINEL = "\u2063OMNIMEM_MEDIA\u2063"
LETTERS = "ABCDEFGHIJ"
_INSTRUCTIONS = {"letter": "Answer with the option's letter.", "option": "Answer with the option."}


def format_question(question: str, options: list[str] | None = None, answer_format: str = "letter") -> str:
    """The question text; with options (and a format that lists them), one lettered line each and
    the instruction for `answer_format`. `completion`: the question without its closing "?"."""
    if answer_format not in ANSWER_FORMATS:
        raise KeyError(f"unknown answer format {answer_format!r}; expected one of {ANSWER_FORMATS}")
    if answer_format == "completion":
        return question.strip().removesuffix("?").rstrip()
    if not options or answer_format == "cloze":
        return question
    lines = [question] + [option_text(options, i, "letter") for i in range(len(options))]
    return "\n".join(lines) + "\n" + _INSTRUCTIONS[answer_format]


def option_text(options: list[str], i: int, answer_format: str = "letter") -> str:
    """Option `i` written as an answer: "B. green" (letter) or "green" (the other formats)."""
    return f"{LETTERS[i]}. {options[i]}" if answer_format == "letter" else options[i]


def question_prompt(tokenizer, system: str, question: str, options: list[str] | None,
                    answer_format: str = "letter") -> tuple[list[int], list[int]]:
    """-> (prefix_ids, question_ids) of a multiple-choice or open question in `answer_format`:
    `format_question` then `split_chat_prompt`, with the same format for both."""
    return split_chat_prompt(tokenizer, system, format_question(question, options, answer_format), answer_format)


def split_chat_prompt(tokenizer, system: str, question: str, answer_format: str = "letter") -> tuple[list[int], list[int]]:
    """-> (prefix_ids, question_ids): prefix = system turn + user header, question = the question,
    end of turn and assistant header. `completion`: prefix = the system line, question = a newline
    and the question (already `format_question`ed): the answer follows its last token."""
    if answer_format == "completion":
        prefix, suffix = (f"{system}\n" if system else ""), f"\n{question}"
    elif getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": _SENTINEL + question}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prefix, suffix = text.split(_SENTINEL)
    else:
        prefix, suffix = f"{system}\nUser: ", f"{question}\nAssistant:"
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    return enc(prefix), enc(suffix)
