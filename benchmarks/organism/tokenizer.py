"""The organism's tokenizer: one token per character (printable ASCII) plus <pad>, <s>, </s>; built offline."""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from attnrl.utils.tiny import char_tokenizer

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]
# A user message is the problem followed by a newline (the generation prompt); an assistant message is the
# solution followed by </s>. No roles are written, so a prompt is 10-20 tokens.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


def organism_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level fast tokenizer (vocab 103: ids 0-2 special, then printable ASCII), left padding."""
    tok = char_tokenizer(SPECIAL_TOKENS, pad_token="<pad>", eos_token="</s>", bos_token="<s>")
    tok.chat_template = CHAT_TEMPLATE
    return tok
