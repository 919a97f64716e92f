"""Known harmless third-party warnings and log lines, silenced where they are issued.

Each entry names the exact message (the whole text, not a prefix) and the module that issues it,
so the same library's other warnings, and the same text from anywhere else, still show.
`install_filters()` is called once at the start of the `omnimem-train` command line (before the
libraries are imported); it is idempotent and imports nothing heavy.
"""

from __future__ import annotations

import logging
import re
import warnings

# (exact message, category, module that issues it: the `__name__` of the frame `warnings.warn`
# points at, i.e. after its stacklevel).
KNOWN_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # HF Trainer's `dataloader_pin_memory` defaults to true; on a CPU-only machine torch says it
    # has nothing to pin to (and does not pin).
    ("'pin_memory' argument is set as true but no accelerator is found, then device pinned memory won't be used.",
     UserWarning, "torch.utils.data.dataloader"),
    # DeepSpeed ZeRO gathers and reduce-scatters with the collectives torch has deprecated (torch's
    # deprecation wrapper sits in c10d_logger); nothing to change on our side.
    ("`torch.distributed.all_gather_into_tensor` is deprecated. Please use `torch.distributed.all_gather_single` "
     "instead.", FutureWarning, "torch.distributed.c10d_logger"),
    ("`torch.distributed.reduce_scatter_tensor` is deprecated. Please use "
     "`torch.distributed.reduce_scatter_single` instead.", FutureWarning, "torch.distributed.c10d_logger"),
    # PEFT asks the base model whether it checkpoints through the attribute transformers renamed.
    ("`is_gradient_checkpointing` is deprecated and will be removed in v6. Use `is_activation_checkpointing` "
     "instead.", FutureWarning, "transformers.modeling_utils"),
)

# logger name -> exact messages (`record.getMessage()`) dropped from that logger.
KNOWN_LOG_LINES: dict[str, tuple[str, ...]] = {
    # PEFT's save_pretrained reads back the adapter's model card, which has no YAML metadata block.
    "huggingface_hub.repocard": ("Repo card metadata block was not found. Setting CardData to empty.",),
}


class _DropKnown(logging.Filter):
    def __init__(self, messages: tuple[str, ...]):
        super().__init__()
        self.messages = frozenset(messages)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.messages


_LOG_FILTERS = {name: _DropKnown(messages) for name, messages in KNOWN_LOG_LINES.items()}


def install_filters() -> None:
    """Ignore exactly the KNOWN_WARNINGS and drop exactly the KNOWN_LOG_LINES."""
    for message, category, module in KNOWN_WARNINGS:
        # `message` is matched case-insensitively from the start, `module` from the start: anchor both ends.
        warnings.filterwarnings("ignore", message=re.escape(message) + r"\Z", category=category,
                                module=re.escape(module) + r"\Z")
    for name, log_filter in _LOG_FILTERS.items():
        logging.getLogger(name).addFilter(log_filter)  # the same object twice is added once
