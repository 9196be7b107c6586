"""Token counting: tiktoken over the o200k ranks counts exactly as bpe-openai's own tokenizer did,
without loading bpe-openai's tables into the gateway."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import bpe_openai
import pytest

from completions.tokens import count_text, estimate_prompt_tokens

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading and trailing spaces  \n\n\tand tabs\r\n",
    "naïve café, crème brûlée, Straße, İstanbul",
    "数字 12345678901234567890 and 3.14159, 1e-9, 0xDEADBEEF",
    "日本語のテキストと中文文本\uff0c还有한국어 텍스트.",
    "emoji 🙂🚀👩‍👩‍👧‍👦 and flags 🇫🇷🇯🇵",
    "def f(x):\n    return {'a': [1, 2, 3], \"b\": None}  # code\n",
    "It's, they're, we've, I'm, you'll, he'd; IT'S THEY'RE",
    "<|endoftext|> is ordinary text here, as are <|fim_prefix|> and [INST]",
    "x" * 5_000,
    "a b " * 2_000,
]


@pytest.mark.parametrize("text", SAMPLES, ids=range(len(SAMPLES)))
def test_given_text_then_the_count_is_bpe_openais(text: str) -> None:
    reference = bpe_openai.get_encoding("o200k_base")

    assert count_text(text) == len(reference.encode_ordinary(text))


def test_given_known_strings_then_their_o200k_counts() -> None:
    assert count_text("") == 0
    assert count_text("hello world") == 2
    assert estimate_prompt_tokens([{"role": "user", "content": "hello world"}]) == 3 + 4 + 2


def test_loading_the_tokenizer_does_not_load_bpe_openai() -> None:
    probe = ("import sys; from completions import tokens; tokens.load(); "
             "print(tokens.count_text('hello world'), 'bpe_openai' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True)

    assert done.stdout.split() == ["2", "False"]
