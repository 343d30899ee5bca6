"""Chat ``messages`` -> the token ids a model sees.

The model's own chat template, from its GGUF metadata
(``tokenizer.chat_template``, rendered with jinja2 as llama.cpp does), when it
has one.  Some GGUFs ship without it — the default gemma-3-270m package is
one — so for known architectures the published template is built here,
token by token: the template's control tokens are special, the messages'
text is tokenized as plain text, so a user who types ``<start_of_turn>``
cannot forge a turn.  Every worker and verifier derives the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Tokenize = Callable[[str, bool], list[int]]  # (text, special) -> ids, no BOS


class ChatTemplateError(Exception):
    """The model has no chat template this engine can apply; send a prompt instead."""


def gemma_turns(messages: Sequence) -> list[tuple[str, str]]:
    """The (role, text) turns of Gemma's template for any chat; gemma has no system role.

    The rules (docs/developer.md, "Chat rules"), so that every chat a client can send has
    one rendering that every worker and verifier derives alike:

    - system (and developer) messages, joined by a blank line, are a preamble of the first
      user turn (Gemma's published template does this);
    - a chat of system messages alone is one user turn of their text;
    - a chat whose first turn is the assistant's starts with an empty user turn (the
      preamble, if any).
    """
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    turns = [("model" if m.role == "assistant" else "user", m.content) for m in messages if m.role != "system"]
    if not turns or turns[0][0] != "user":
        turns.insert(0, ("user", system))
    elif system:
        turns[0] = ("user", f"{system}\n\n{turns[0][1]}")
    return turns


def gemma_tokens(tokenize: Tokenize, bos: int, messages: Sequence) -> list[int]:
    """Gemma's template: user/model turns (see :func:`gemma_turns` for chats it does not foresee)."""
    tokens = [bos]
    for role, content in gemma_turns(messages):
        tokens += tokenize("<start_of_turn>", True) + tokenize(f"{role}\n{content}", False)
        tokens += tokenize("<end_of_turn>", True) + tokenize("\n", False)
    return tokens + tokenize("<start_of_turn>", True) + tokenize("model\n", False)


BUILT_IN = {"gemma": gemma_tokens, "gemma2": gemma_tokens, "gemma3": gemma_tokens}


def chat_tokens(metadata: dict, tokenize: Tokenize, piece: Callable[[int], str], bos: int, eos: int,
                messages: Sequence) -> list[int]:
    """``piece(id)`` is a special token's text (``<bos>``), for templates that write it."""
    template = metadata.get("tokenizer.chat_template")
    if template:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        formatter = Jinja2ChatFormatter(template=template, eos_token=piece(eos), bos_token=piece(bos),
                                        add_generation_prompt=True)
        rendered = formatter(messages=[{"role": m.role, "content": m.content} for m in messages])
        return tokenize(rendered.prompt, True)
    build = BUILT_IN.get(metadata.get("general.architecture", ""))
    if build is None:
        raise ChatTemplateError("this model's GGUF has no chat template and its architecture has no built-in one; "
                                "send a plain prompt")
    return build(tokenize, bos, messages)
