"""Token sets of docs/methods.md §2 read off a chat-formatted batch: V (image), S (system), U (user query), R (response).

Definitions (per row of a padded batch, positions in the padded coordinates):
- V: the image placeholder tokens (``<|image_pad|>``) of the prompt; each is one visual embedding.
- S: everything before the first user turn: from the first real token up to (excluding) the ``<|im_start|>`` that
  opens the first ``user`` turn. With the Qwen-VL templates this is ``<|im_start|>system\\n...<|im_end|>\\n``,
  including the default system prompt the template inserts. A template without a system turn (and no system
  message in the prompt) leaves S empty: AVAR's ratios mass_V / mass_S are then undefined and refused
  (:func:`require_system_span`).
- U: the content of the user turns (after the ``<|im_start|>user\\n`` header, before ``<|im_end|>``) without the
  vision tokens (``<|vision_start|>``, ``<|image_pad|>``, ``<|video_pad|>``, ``<|vision_end|>``): the query text.
- R: ``[resp_start, end of the row)``.

Turns are found from the ids alone (the ``<|im_start|>`` / ``<|im_end|>`` markers of the Qwen chat templates and
the role name decoded up to the header's newline), so the same code serves the processor's chat template, TRL's
padded rollouts and teacher-forced SFT batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SpecialTokenIds", "TokenSets", "empty_system_error", "require_system_span", "token_sets"]

_ROLE_HEADER_MAX_TOKENS = 8


@dataclass(frozen=True)
class SpecialTokenIds:
    """Ids of the Qwen-VL chat markers in one tokenizer."""

    im_start: int
    im_end: int
    image_pad: int
    vision: tuple[int, ...]  # every token that belongs to an image/video block (excluded from U)

    @classmethod
    def from_tokenizer(cls, tokenizer) -> SpecialTokenIds:
        """Looks the markers up in ``tokenizer`` (or a processor's ``.tokenizer``); ValueError if one is missing."""
        tok = getattr(tokenizer, "tokenizer", tokenizer)
        names = ("<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>")
        ids = {}
        for name in names:
            i = tok.convert_tokens_to_ids(name)
            if i is None or i == tok.unk_token_id:
                raise ValueError(f"tokenizer has no {name} token: AVAR token sets need a Qwen-VL chat tokenizer")
            ids[name] = i
        return cls(ids["<|im_start|>"], ids["<|im_end|>"], ids["<|image_pad|>"],
                   tuple(ids[n] for n in names[2:]))


@dataclass
class TokenSets:
    """Boolean masks (B, T) over the padded batch."""

    image: torch.Tensor  # V
    system: torch.Tensor  # S
    user: torch.Tensor  # U
    response: torch.Tensor  # R

    def key_masks(self) -> torch.Tensor:
        """(B, 2, T) float masks [V, S], the ``key_masks`` argument of the attention-statistics kernels."""
        return torch.stack([self.image, self.system], 1).float()


def empty_system_error(rows: list[int], what: str) -> ValueError:
    """The error for batch rows whose system span S is empty (no system turn before the first user turn)."""
    return ValueError(
        f"{what}: rows {rows} have no system tokens (S is empty: the chat template put no system turn before the "
        "first user turn), so mass_V / mass_S divides by zero (by eps in r_visual, giving values near 1/eps). Give "
        "each prompt a system message, e.g. {'role': 'system', 'content': 'You are a helpful assistant.'}, or use a "
        "chat template that inserts a default one, as the Qwen2-VL / Qwen2.5-VL templates do (docs/methods.md §2)"
    )


def require_system_span(sets: TokenSets, what: str) -> None:
    """ValueError (:func:`empty_system_error`) when a row of ``sets`` has an empty S."""
    empty = (sets.system.sum(1) == 0).nonzero().flatten().tolist()
    if empty:
        raise empty_system_error(empty, what)


def _role_header(ids: list[int], start: int, end: int, tokenizer) -> tuple[str, int]:
    """(role, index of the first content token) of the turn whose ``<|im_start|>`` is at ``start``."""
    for n in range(1, min(_ROLE_HEADER_MAX_TOKENS, end - start - 1) + 1):
        text = tokenizer.decode(ids[start + 1 : start + 1 + n])
        if "\n" in text:
            return text.split("\n", 1)[0].strip(), start + 1 + n
    return "", start + 1


def token_sets(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    tokenizer,
    resp_start: torch.Tensor | int | None = None,
    special: SpecialTokenIds | None = None,
) -> TokenSets:
    """V, S, U, R masks of a batch. input_ids/attention_mask: (B, T); resp_start: (B,) or int, None = no response.

    ``tokenizer`` decodes role names (a processor works too). Raises ValueError for a row without a user turn.
    """
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    special = special or SpecialTokenIds.from_tokenizer(tok)
    B, T = input_ids.shape
    valid = attention_mask.bool()
    if resp_start is None:
        resp_start = T
    resp = torch.as_tensor(resp_start, device=input_ids.device).expand(B)
    pos = torch.arange(T, device=input_ids.device)
    response = valid & (pos[None] >= resp[:, None])
    in_prompt = valid & ~response
    image = in_prompt & (input_ids == special.image_pad)
    system = torch.zeros_like(valid)
    user = torch.zeros_like(valid)
    vision = torch.isin(input_ids, torch.tensor(special.vision, device=input_ids.device))
    for b in range(B):
        ids = input_ids[b].tolist()
        first = int(valid[b].float().argmax()) if valid[b].any() else T
        end = int(resp[b])
        starts = [i for i in range(first, end) if ids[i] == special.im_start and valid[b, i]]
        user_turns = []
        for s in starts:
            role, content = _role_header(ids, s, end, tok)
            if role == "user":
                close = next((i for i in range(content, end) if ids[i] == special.im_end), end)
                user_turns.append((s, content, close))
        if not user_turns:
            raise ValueError(f"row {b} has no user turn (no '<|im_start|>user' header before the response)")
        system[b, first : user_turns[0][0]] = True
        for _, content, close in user_turns:
            user[b, content:close] = True
    user &= ~vision & in_prompt
    return TokenSets(image=image, system=system & in_prompt, user=user, response=response)
