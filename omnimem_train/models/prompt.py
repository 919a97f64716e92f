"""Chat-template prompts split around the media: (prefix before the stream, question after it).

The model's own chat template is rendered with a sentinel where the media goes, then split, so
any template (Qwen2.5-Omni's, SmolLM2's) places the stream exactly where a user turn's video would
be and the question plus the assistant header after it.
"""

from __future__ import annotations

_SENTINEL = "\u2063OMNIMEM_MEDIA\u2063"
LETTERS = "ABCDEFGHIJ"
# How a multiple-choice answer is written (training target) and scored (inference):
#   letter: "B. green" -- the letter first, as VideoMME-style prompts ask;
#   option: "green"    -- the option's own text, scored by likelihood as lm-eval-harness does;
#   cloze:  "green"    -- as option, but the prompt is the question alone (no option lines, no
#                         instruction): the cloze formulation of lm-eval-harness / OLMES. The answer
#                         follows the stream 16-31 tokens later instead of 47-75 on the testbed, and
#                         the prompt's length no longer depends on the options (on the testbed this
#                         did not make the temporal questions learnable: docs/testbed.md).
ANSWER_FORMATS = ("letter", "option", "cloze")
_INSTRUCTIONS = {"letter": "Answer with the option's letter.", "option": "Answer with the option."}


def format_question(question: str, options: list[str] | None = None, answer_format: str = "letter") -> str:
    """The question text; with options (and a format other than cloze), one lettered line each and
    the instruction for `answer_format`."""
    if answer_format not in ANSWER_FORMATS:
        raise KeyError(f"unknown answer format {answer_format!r}; expected one of {ANSWER_FORMATS}")
    if not options or answer_format == "cloze":
        return question
    lines = [question] + [option_text(options, i, "letter") for i in range(len(options))]
    return "\n".join(lines) + "\n" + _INSTRUCTIONS[answer_format]


def option_text(options: list[str], i: int, answer_format: str = "letter") -> str:
    """Option `i` written as an answer: "B. green" (letter) or "green" (option, cloze)."""
    return f"{LETTERS[i]}. {options[i]}" if answer_format == "letter" else options[i]


def split_chat_prompt(tokenizer, system: str, question: str) -> tuple[list[int], list[int]]:
    """-> (prefix_ids, question_ids): prefix = system turn + user header, question = the question,
    end of turn and assistant header."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": _SENTINEL + question}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prefix, suffix = text.split(_SENTINEL)
    else:
        prefix, suffix = f"{system}\nUser: ", f"{question}\nAssistant:"
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    return enc(prefix), enc(suffix)
