"""Reading an upstream's event stream: lines end in LF, CRLF or a lone CR, wherever reads split."""

from __future__ import annotations

import pytest

from completions.upstream import _lines


class Body:
    """What aiohttp's StreamReader offers the reader: `readany()`, then b"" at the end."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = list(pieces)

    async def readany(self) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


async def lines(*pieces: bytes) -> list[bytes]:
    return [line async for line in _lines(Body(*pieces))]  # type: ignore[arg-type]


@pytest.mark.parametrize("pieces", [
    (b"data: 1\n\ndata: [DONE]\n\n",),
    (b"data: 1\r\n\r\ndata: [DONE]\r\n\r\n",),
    (b"data: 1\r", b"\n\r", b"\ndata: [DONE]\r\n", b"\r\n"),  # CRLF split across reads
    (b"data: 1\r\rdata: [DONE]\r\r",),  # lone CRs, the stream's last one included
    (b"da", b"ta: 1\n", b"\nda", b"ta: [DONE]\n\n"),
])
async def test_given_any_line_ending_then_the_same_lines(pieces: tuple[bytes, ...]) -> None:
    assert await lines(*pieces) == [b"data: 1", b"", b"data: [DONE]", b""]


async def test_given_a_last_line_without_an_ending_then_it_is_still_read() -> None:
    assert await lines(b"data: 1\n\ndata: [DONE]") == [b"data: 1", b"", b"data: [DONE]"]
