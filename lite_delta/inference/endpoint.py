"""OpenAI-compatible inference servers as a generation backend: llama-server, vLLM, SGLang, Ollama, ...

A pool of endpoints that serve the same model answers chat requests through the maintained ``openai``
client (``AsyncOpenAI`` with ``base_url``; its own retries off, ours counted). Every endpoint keeps at
most ``max_in_flight`` requests in flight, all endpoints at once, fed from one queue, so a fast
server takes more of the work. Connection errors, timeouts, 5xx and 408/409/429 answers put the
request back in the queue and make that endpoint wait (exponential backoff); an endpoint that fails
``retries`` times in a row is left out for the rest of the run; when none is left the run stops with
the finished answers already handed out. Any other 4xx (a wrong model name, a bad parameter) stops at
once with the server's own message. A reply that is malformed, implausible, larger than the cap or not
complete within ``timeout`` (the whole exchange, not one read) counts as a failure of that endpoint
(``replies.py``): nothing of it is stored.
"""

from __future__ import annotations

import asyncio
import os
import queue
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from lite_delta.errors import LiteDeltaError
from lite_delta.inference.replies import BadReply, CappedTransport, bad_reply_in, parse_chat_reply, parse_model_list

RETRYABLE_STATUS = (408, 409, 429)  # and every 5xx: the server is busy or broken, not the request
MAX_BACKOFF_S = 60.0


@dataclass
class ChatRequest:
    key: str
    messages: list[dict]
    seed: int
    payload: Any = None
    attempts: int = 0


@dataclass
class ChatCompletion:
    request: ChatRequest
    text: str
    finish_reason: str
    prompt_tokens: int  # the server's counts (response `usage`), checked (replies.py)
    completion_tokens: int
    endpoint: str


@dataclass
class EndpointState:
    url: str
    served: list[str] = field(default_factory=list)  # model ids from GET /v1/models
    chat_template: str | None = None
    completed: int = 0
    retries: int = 0  # failed attempts that were retried
    errors: Counter = field(default_factory=Counter)
    failures_in_a_row: int = 0
    retry_at: float = 0.0
    down: str | None = None  # why this endpoint was left out

    def summary(self) -> dict:
        return {"url": self.url, "completed": self.completed, "retries": self.retries, "errors": dict(self.errors),
                "down": self.down}


def server_root(url: str) -> str:
    """http://host:port/v1 -> http://host:port (llama-server serves /props beside /v1)."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def server_message(exc: Exception) -> str:
    """The server's own error text from an openai exception (its JSON `error.message` where there is one);
    what was wrong with a bad reply; how long a timed-out request had."""
    bad = bad_reply_in(exc)
    if bad is not None:
        return str(bad)
    if isinstance(exc, TimeoutError):
        return str(exc) or "no complete reply in time"
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"]).strip().rstrip(".")
        if isinstance(err, str):
            return err.strip().rstrip(".")
    return str(getattr(exc, "message", None) or exc).strip().rstrip(".")


def _kind(exc: Exception) -> str:
    import openai

    bad = bad_reply_in(exc)
    if bad is not None:
        return bad.kind
    if isinstance(exc, (openai.APITimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    if isinstance(exc, openai.APIStatusError):
        return f"http_{exc.status_code}"
    return type(exc).__name__


def _retryable(exc: Exception) -> bool:
    import openai

    if isinstance(exc, (openai.APIConnectionError, BadReply, TimeoutError)):  # APITimeoutError is a connection error
        return True
    return isinstance(exc, openai.APIStatusError) and (exc.status_code >= 500 or exc.status_code in RETRYABLE_STATUS)


class EndpointPool:
    """Several OpenAI-compatible servers of one model, used together."""

    def __init__(
        self,
        urls: Iterable[str],
        *,
        model: str | None = None,
        max_in_flight: int = 8,
        timeout: float = 600.0,
        retries: int = 5,
        backoff: float = 1.0,
        api_key_env: str | None = None,
    ):
        self.endpoints = [EndpointState(u.rstrip("/")) for u in urls]
        if not self.endpoints:
            raise LiteDeltaError("an endpoint teacher needs at least one URL (endpoints: [http://HOST:PORT/v1])")
        self.requested_model = model
        self.model: str | None = None
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        if api_key_env:
            if not os.environ.get(api_key_env):
                raise LiteDeltaError(f"api_key_env: the environment variable {api_key_env} is not set")
            self.api_key = os.environ[api_key_env]
        else:
            self.api_key = "none"  # local servers take any key; the client insists on one

    def _client(self, url: str):
        import httpx2 as httpx  # openai 3.x's HTTP client
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient

        transport = CappedTransport(limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100))
        http = DefaultAsyncHttpxClient(transport=transport, timeout=self.timeout)  # follows redirects, as the default
        return AsyncOpenAI(base_url=url, api_key=self.api_key, max_retries=0, timeout=self.timeout, http_client=http)

    async def _bounded(self, call):
        """``call`` (a coroutine) within the request timeout as a whole: httpx's timeout is per read, so a
        server that drips a byte at a time would never trip it."""
        try:
            return await asyncio.wait_for(call, self.timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no complete reply within {self.timeout:g} s") from None

    def _wait(self, failures: int) -> float:
        base = min(self.backoff * 2 ** (failures - 1), MAX_BACKOFF_S)
        return base * (0.75 + 0.5 * random.random())  # jitter: endpoints restarting together are not hit together

    # ------------------------------------------------------------------ what the servers serve

    def connect(self) -> dict:
        """Ask every endpoint what it serves (GET /v1/models, retried) and which chat template it uses
        (llama-server's GET /props); pick the model; leave out endpoints that cannot be reached."""
        asyncio.run(self._connect())
        live = [e for e in self.endpoints if not e.down]
        if not live:
            raise LiteDeltaError("no endpoint could be reached: " + "; ".join(f"{e.url} ({e.down})" for e in self.endpoints)
                                 + ". Start the servers (or fix the URLs) and rerun; finished answers are kept")
        for e in live:
            if self.requested_model is not None and self.requested_model not in e.served:
                raise LiteDeltaError(f"endpoint {e.url} serves {', '.join(e.served) or 'no model'}, not "
                                     f"{self.requested_model!r}: set the teacher's `model` to the name the server lists")
            if self.requested_model is None and len(e.served) != 1:
                raise LiteDeltaError(f"endpoint {e.url} serves {len(e.served)} models ({', '.join(e.served)}): "
                                     "set the teacher's `model` to one of them")
        self.model = self.requested_model or live[0].served[0]
        others = [e.url for e in live if self.model not in e.served]
        if others:
            raise LiteDeltaError(f"the endpoints serve different models: {live[0].url} serves {self.model!r}, "
                                 f"{', '.join(others)} do not; one teacher's endpoints must serve one model")
        templates = {e.chat_template for e in live}
        if len(templates) > 1:
            raise LiteDeltaError("the endpoints report different chat templates: one teacher's servers must apply "
                                 "the same template (" + ", ".join(e.url for e in live) + ")")
        return {"model": self.model, "chat_template": templates.pop()}

    async def _connect(self) -> None:
        await asyncio.gather(*(self._describe(e) for e in self.endpoints))

    async def _describe(self, e: EndpointState) -> None:
        import openai

        client = self._client(e.url)
        try:
            for attempt in range(1, self.retries + 2):
                try:
                    raw = await self._bounded(client.models.with_raw_response.list())
                    e.served = parse_model_list(raw.http_response.content)
                    break
                except openai.APIStatusError as exc:
                    if not _retryable(exc):
                        raise LiteDeltaError(f"endpoint {e.url} refused GET /models ({exc.status_code}): "
                                             f"{server_message(exc)}") from None
                    last = exc
                except (openai.APIConnectionError, BadReply, TimeoutError) as exc:
                    last = exc
                e.retries += 1
                e.errors[_kind(last)] += 1
                if attempt <= self.retries:
                    await asyncio.sleep(self._wait(attempt))
            else:
                e.down = f"{_kind(last)}: {server_message(last)}"
                return
            try:  # llama-server reports its template; the OpenAI API has no field for it
                props = await self._bounded(client.get(server_root(e.url) + "/props", cast_to=object))
                template = props.get("chat_template") if isinstance(props, dict) else None
                e.chat_template = template if isinstance(template, str) and template else None
            except (openai.APIError, BadReply, TimeoutError):  # no usable /props: the template is unknown
                e.chat_template = None
        finally:
            await client.close()

    # ------------------------------------------------------------------ generation

    def generate(self, requests: list[ChatRequest], sampling: dict) -> Iterator[ChatCompletion]:
        """Yield each answer as soon as its request finishes (not in request order).

        ``sampling`` is the request body besides model, messages and seed (temperature, top_p,
        max_tokens, stop, extra_body). The requests run on an event loop in a background thread; a
        fatal error is raised here after the answers that finished before it were yielded."""
        if self.model is None:
            self.connect()
        results: queue.Queue = queue.Queue()
        stop = threading.Event()
        end = object()

        def run() -> None:
            try:
                asyncio.run(self._run(requests, sampling, results.put, stop))
            except BaseException as exc:  # handed to the consuming thread
                results.put(exc)
            finally:
                results.put(end)

        thread = threading.Thread(target=run, name="lite-delta-endpoints", daemon=True)
        thread.start()
        try:
            while True:
                try:
                    item = results.get(timeout=0.5)  # a timeout keeps Ctrl-C responsive
                except queue.Empty:
                    continue
                if item is end:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=30)

    async def _run(self, requests: list[ChatRequest], sampling: dict, emit, stop: threading.Event) -> None:
        todo: asyncio.Queue = asyncio.Queue()
        for r in requests:
            todo.put_nowait(r)
        state = {"remaining": len(requests), "fatal": None}
        done = asyncio.Event()
        if not requests:
            return
        limit = (self.retries + 1) * len(self.endpoints)  # attempts of one request, over all endpoints

        def fail(exc: Exception) -> None:
            if state["fatal"] is None:
                state["fatal"] = exc
            done.set()

        async def worker(e: EndpointState, client) -> None:
            try:
                await work(e, client)
            except Exception as exc:  # noqa: BLE001 -- never a silent dead worker: the run stops and says why
                fail(exc)

        async def work(e: EndpointState, client) -> None:
            while not done.is_set():
                request = await todo.get()
                wait = e.retry_at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if e.down:  # left out while this worker waited: the request goes to the others
                    todo.put_nowait(request)
                    return
                try:
                    raw = await self._bounded(client.chat.completions.with_raw_response.create(
                        model=self.model, messages=request.messages, seed=request.seed, **sampling))
                    reply = parse_chat_reply(raw.http_response.content)
                except Exception as exc:  # noqa: BLE001 -- sorted below: retried, or the run stops
                    if not _retryable(exc):
                        status = getattr(exc, "status_code", "")
                        fail(LiteDeltaError(f"endpoint {e.url} refused the request{f' ({status})' if status else ''}: "
                                            f"{server_message(exc)}"))
                        return
                    e.retries += 1
                    e.errors[_kind(exc)] += 1
                    request.attempts += 1
                    if request.attempts >= limit:
                        fail(LiteDeltaError(f"one request failed {request.attempts} times (last: {e.url}, "
                                            f"{_kind(exc)}: {server_message(exc)}); finished answers are saved, "
                                            "rerun to continue"))
                        return
                    todo.put_nowait(request)
                    now = time.monotonic()
                    if now >= e.retry_at:  # one failure per backoff window: a burst of in-flight errors is one
                        e.failures_in_a_row += 1
                        e.retry_at = now + self._wait(e.failures_in_a_row)
                    if e.failures_in_a_row > self.retries:
                        e.down = f"{e.failures_in_a_row} failures in a row, last {_kind(exc)}: {server_message(exc)}"
                        if all(x.down for x in self.endpoints):
                            fail(LiteDeltaError(
                                "every endpoint failed: " + "; ".join(f"{x.url} ({x.down})" for x in self.endpoints)
                                + ". The finished answers are saved: restart the servers and rerun to continue"))
                        return
                    continue
                e.failures_in_a_row = 0
                e.completed += 1
                emit(ChatCompletion(request, reply.text, reply.finish_reason, reply.prompt_tokens,
                                    reply.completion_tokens, e.url))
                state["remaining"] -= 1
                if state["remaining"] == 0:
                    done.set()

        async def watch_stop() -> None:
            while not done.is_set():
                if stop.is_set():
                    fail(KeyboardInterrupt())
                await asyncio.sleep(0.2)

        live = [e for e in self.endpoints if not e.down]
        clients = [self._client(e.url) for e in live]
        tasks = [asyncio.create_task(worker(e, c)) for e, c in zip(live, clients) for _ in range(self.max_in_flight)]
        tasks.append(asyncio.create_task(watch_stop()))
        try:
            await done.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for c in clients:
                await c.close()
        if state["fatal"] is not None:
            raise state["fatal"]

    def summary(self) -> dict:
        return {
            "endpoints": [e.summary() for e in self.endpoints],
            "retries": sum(e.retries for e in self.endpoints),
            "errors": dict(sum((e.errors for e in self.endpoints), Counter())),
        }

