"""Chat-template prompts split around the media: (prefix before the stream, question after it).

The model's own chat template is rendered with a sentinel where the media goes, then split, so
any template (Qwen2.5-Omni's, SmolLM2's) places the stream exactly where a user turn's video would
be and the question plus the assistant header after it.
"""

from __future__ import annotations

_SENTINEL = "\u2063OMNIMEM_MEDIA\u2063"
LETTERS = "ABCDEFGHIJ"


def format_question(question: str, options: list[str] | None = None) -> str:
    """The question text; with options, one lettered line each and an instruction to answer with a letter."""
    if not options:
        return question
    lines = [question] + [f"{LETTERS[i]}. {opt}" for i, opt in enumerate(options)]
    return "\n".join(lines) + "\nAnswer with the option's letter."


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
