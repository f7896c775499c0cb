"""What an OpenAI-compatible server's reply must be before anything of it is stored or trusted.

A server is another program: its reply can be malformed (not JSON, ``{}``, no choices), of the wrong
shape (content that is not a string, no finish reason, no token counts), implausible (a 50 MB answer
said to be 3 tokens) or endless (a body dripped one byte at a time, or one that never stops growing).
Every such reply becomes a :class:`BadReply`, which the endpoint pool treats as it treats a 5xx: the
request is retried and counted, and an endpoint that keeps answering so is left out. The bounds:
``MAX_REPLY_BYTES`` on every response body (:class:`CappedTransport`), the request ``timeout`` on the
whole exchange (not per read), and ``MAX_CHARS_PER_TOKEN`` between an answer and its token count.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import httpx2 as httpx  # the HTTP client the pinned openai (3.x) is built on: its transports plug in

from lite_delta.errors import LiteDeltaError
from lite_delta.files import parse_json

MAX_REPLY_BYTES = 16 * 1024 * 1024  # one chat completion; a 128k-token answer is ~0.5-1 MB of JSON
MAX_TOKEN_COUNT = 10_000_000  # no prompt or answer is this long: a count past it is not a count
MAX_CHARS_PER_TOKEN = 64  # tokenizers' longest tokens are runs of spaces or dashes, well under this
FINISH_REASONS = ("stop", "length", "content_filter", "tool_calls", "function_call")


class BadReply(Exception):
    """A reply the server should not have sent; ``kind`` is how it is counted (``bad_reply``, ``reply_too_large``)."""

    def __init__(self, message: str, kind: str = "bad_reply"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ChatReply:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def _parsed(body: bytes, where: str):
    try:  # not UTF-8, not JSON, nested past the parser, huge integers, lone surrogates: one reason each
        return parse_json(body, where)
    except LiteDeltaError as exc:
        raise BadReply(str(exc)) from None


def _count(usage: dict, field: str) -> int:
    value = usage.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TOKEN_COUNT:
        raise BadReply(f"usage.{field} is not a token count (got {value!r:.40})")
    return value


def parse_chat_reply(body: bytes) -> ChatReply:
    """The one answer in a POST /chat/completions body, checked field by field; BadReply otherwise."""
    data = _parsed(body, "the reply")
    if not isinstance(data, dict):
        raise BadReply(f"the reply is JSON {type(data).__name__}, not an object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise BadReply("the reply has no `choices`")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise BadReply("the reply's choice has no `message` object")
    text = message.get("content")
    if text is None:
        text = ""  # no content at all (a refusal or a tool call): an empty answer, counted as one
    if not isinstance(text, str):
        raise BadReply(f"the reply's `content` is {type(text).__name__}, not a string")
    finish = choice.get("finish_reason")
    if finish not in FINISH_REASONS:
        raise BadReply(f"the reply's `finish_reason` is {finish!r:.40}, not one of {', '.join(FINISH_REASONS)}")
    usage = data.get("usage")
    if not isinstance(usage, dict):
        raise BadReply("the reply has no `usage` (token counts); lite-delta records them for pairing")
    prompt_tokens, completion_tokens = _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")
    if len(text) > MAX_CHARS_PER_TOKEN * max(completion_tokens, 1):
        raise BadReply(f"the answer has {len(text):,} characters for {completion_tokens} tokens: "
                       "the server's token count cannot be right")
    return ChatReply(text, finish, prompt_tokens, completion_tokens)


def parse_model_list(body: bytes) -> list[str]:
    """The model ids in a GET /models body; BadReply where it is not the OpenAI shape."""
    data = _parsed(body, "GET /models")
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in entries):
        raise BadReply("GET /models did not return {\"data\": [{\"id\": ...}, ...]}")
    return [m["id"] for m in entries]


def _too_large(limit: int) -> BadReply:
    return BadReply(f"the reply is larger than {limit // (1024 * 1024)} MiB", kind="reply_too_large")


class _CappedStream(httpx.AsyncByteStream):
    """The body as it arrives, cut off past ``limit`` bytes; a gzip or deflate body is inflated here, and cut off
    past ``limit`` bytes inflated (a 64 kB gzip can hold gigabytes of zeros)."""

    def __init__(self, stream, limit: int, encoding: str | None = None):
        self.stream, self.limit = stream, limit
        self.inflate = (zlib.decompressobj(16 + zlib.MAX_WBITS if encoding in ("gzip", "x-gzip") else zlib.MAX_WBITS)
                        if encoding else None)

    async def __aiter__(self):
        seen = made = 0
        async for chunk in self.stream:
            seen += len(chunk)
            if seen > self.limit:
                raise _too_large(self.limit)
            if self.inflate is None:
                yield chunk
                continue
            while chunk:
                try:
                    out = self.inflate.decompress(chunk, self.limit - made + 1)
                except zlib.error as exc:
                    raise BadReply(f"the reply's compressed body is corrupt ({exc})") from None
                made += len(out)
                if made > self.limit:
                    raise _too_large(self.limit)
                if out:
                    yield out
                chunk = self.inflate.unconsumed_tail

    async def aclose(self) -> None:
        await self.stream.aclose()


class CappedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport, asking for uncompressed replies and cutting every response body off (BadReply) past
    ``limit`` bytes, before or after inflating a gzip/deflate body that a server sends anyway."""

    def __init__(self, limit: int = MAX_REPLY_BYTES, **kwargs):
        super().__init__(**kwargs)
        self.limit = limit

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.headers["Accept-Encoding"] = "identity"
        response = await super().handle_async_request(request)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "", "gzip", "x-gzip", "deflate"):
            await response.aclose()
            raise BadReply(f"the reply is {encoding!r}-encoded, which lite-delta does not read (it asks for none)")
        headers = [(k, v) for k, v in response.headers.multi_items()
                   if k.lower() not in ("content-encoding", "content-length")]  # inflated here, not by httpx
        stream = _CappedStream(response.stream, self.limit, encoding if encoding in ("gzip", "x-gzip", "deflate")
                               else None)
        return httpx.Response(status_code=response.status_code, headers=headers, stream=stream,
                              extensions=response.extensions)


def bad_reply_in(exc: BaseException) -> BadReply | None:
    """The BadReply behind an exception (the openai client wraps what the transport raises)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, BadReply):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None
