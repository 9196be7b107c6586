"""Offline token counting: tiktoken with the o200k ranks read from disk (nothing is downloaded).

Used to size a request's reservation before the upstream has seen it, and to
count what was delivered when the upstream reports no usage (a stream the
client abandoned, an upstream that omits `usage`).

tiktoken would download its ranks file on first use, which cannot work
offline; the same file ships inside the bpe-openai package, and is read
from there. bpe-openai itself is not imported: its tokenizer keeps ~140 MB
of tables in every process, tiktoken's the same ranks in ~50 MB
(bench/results/REPORT.md, idle worker memory). Both count alike: the same
ranks, the same pre-tokenising pattern.
"""

from __future__ import annotations

import base64
import functools
import gzip
import importlib.util
from pathlib import Path
from typing import Any

import tiktoken

# OpenAI's chat format adds a few tokens per message and per reply; this is
# the usual allowance for it.
_TOKENS_PER_MESSAGE = 4
_TOKENS_PER_REPLY = 3
# What an image may cost a vision model at high detail; a reservation is a
# ceiling, so the high estimate is the safe one.
TOKENS_PER_IMAGE = 800

# How o200k_base splits text into pieces before merging (OpenAI's definition).
_O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])


def _ranks_file() -> Path:
    """Where bpe-openai's package keeps the o200k ranks, found without importing it."""
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the o200k ranks ship with the bpe-openai package: install it")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "o200k_base.tiktoken.gz"


def _read_ranks(path: Path) -> dict[bytes, int]:
    """A .tiktoken file: one `base64(token) rank` pair per line."""
    ranks = {}
    with gzip.open(path, "rt", encoding="ascii") as lines:
        for line in lines:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def load() -> None:
    """Build the tokenizer now: it takes about a second, which no request should wait for."""
    _encoding()


@functools.lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    ranks = _read_ranks(_ranks_file())
    encoding = tiktoken.Encoding("o200k_base", pat_str=_O200K_PATTERN,
                                 mergeable_ranks=ranks, special_tokens={})
    # The Rust core has copied the ranks; tiktoken keeps this dict only to
    # pickle the encoding, which nothing here does. Emptying it frees ~23 MB
    # per worker (200,000 bytes objects).
    ranks.clear()
    return encoding


def count_text(text: str) -> int:
    if not text:
        return 0
    return len(_encoding().encode_ordinary(text))


def _content_tokens(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_text(content)
    total = 0
    for part in content:
        if part.get("type") == "text":
            total += count_text(str(part.get("text", "")))
        elif part.get("type") in ("image_url", "input_image"):
            total += TOKENS_PER_IMAGE
        else:
            total += count_text(str(part))
    return total


def estimate_prompt_tokens(
    messages: list[dict[str, Any]], extra: dict[str, Any] | None = None
) -> int:
    """Prompt tokens of upstream-shaped messages (content parts already built), plus tools."""
    total = _TOKENS_PER_REPLY
    for message in messages:
        total += _TOKENS_PER_MESSAGE + _content_tokens(message.get("content"))
        if message.get("name"):
            total += count_text(str(message["name"]))
        if message.get("tool_calls"):
            total += count_text(str(message["tool_calls"]))
    if extra and extra.get("tools"):
        total += count_text(str(extra["tools"]))
    return total
