"""`pico serve`: a checkpoint behind an OpenAI-compatible HTTP API (aiohttp, the `serve` extra).

POST /v1/chat/completions and /v1/completions (stream as server-sent events, temperature, top_p, max_tokens,
stop, n, seed), GET /v1/models and GET /health. Request shapes and errors: pico/openai_api.py; decoding, batched
with a KV cache behind a bounded queue: pico/batcher.py. Over the queue: 429 with Retry-After; a prompt longer
than the context: 400 with both lengths; a body that is not JSON: 400. With an API key (`--api-key-env NAME`)
every /v1 request needs `Authorization: Bearer <key>`; the key is never logged.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass, field

from aiohttp import web

from pico.batcher import Batcher, QueueFull, make_rows
from pico.openai_api import (
    Completion,
    RequestError,
    chunk_body,
    models_body,
    new_id,
    parse_json,
    parse_request,
    response_body,
)
from pico.prompt import encode_prompt

log = logging.getLogger("pico.serve")


@dataclass
class Server:
    """What the routes share: the decoding thread, the served model's name, the key (if any)."""

    batcher: Batcher
    model_id: str
    api_key: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))


SERVER = web.AppKey("server", Server)


def _error(e: RequestError) -> web.Response:
    return web.json_response(e.body(), status=e.status, headers=e.headers)


@web.middleware
async def errors_and_auth(request: web.Request, handler):
    server = request.app[SERVER]
    try:
        if request.path.startswith("/v1/") and server.api_key is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {server.api_key}".encode()):
                raise RequestError(401, "missing or wrong API key: send Authorization: Bearer <key>",
                                   code="invalid_api_key")
        return await handler(request)
    except RequestError as e:
        return _error(e)


async def health(request: web.Request) -> web.Response:
    b = request.app[SERVER].batcher
    return web.json_response({"status": "ok", "waiting": len(b.waiting), **b.stats})


async def models(request: web.Request) -> web.Response:
    server = request.app[SERVER]
    return web.json_response(models_body(server.model_id, server.created))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, "chat")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, "text")


async def _complete(request: web.Request, kind: str) -> web.StreamResponse:
    server = request.app[SERVER]
    req = parse_request(parse_json(await request.read()), kind, server.model_id)
    tok, context = server.batcher.tok, server.batcher.context
    prompt_ids = encode_prompt(tok, req.prompt)
    if len(prompt_ids) >= context:
        raise RequestError(400, f"the prompt is {len(prompt_ids)} tokens but the model's context is {context} "
                                f"tokens (at least one must be left for the answer); shorten it",
                           "messages" if kind == "chat" else "prompt", "context_length_exceeded")
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    rows = make_rows(prompt_ids, req.n, req.max_tokens, req.temperature, req.top_p, req.seed, req.stop, context,
                     lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
    try:
        server.batcher.submit(rows)
    except QueueFull as e:
        raise RequestError(429, f"the server is busy ({server.batcher.max_queue} answers waiting); retry in "
                                f"{e.retry_after} s", code="queue_full",
                           headers={"Retry-After": str(e.retry_after)}) from None
    try:
        if req.stream:
            return await _stream(request, req, server.model_id, events)
        return await _collect(req, server.model_id, events, len(prompt_ids))
    finally:  # the client went away (or we are done): rows still decoding stop at their next token
        for row in rows:
            row.cancelled.set()


async def _collect(req: Completion, model_id: str, events: asyncio.Queue, prompt_tokens: int) -> web.Response:
    texts, finishes, used = [""] * req.n, [""] * req.n, 0
    for _ in range(req.n):
        event = await _next_done(events)
        _, index, text, finish, n_tokens = event
        texts[index], finishes[index] = text, finish
        used += n_tokens
    return web.json_response(response_body(req, new_id(req.kind), model_id, texts, finishes, prompt_tokens, used))


async def _next_done(events: asyncio.Queue) -> tuple:
    while True:
        event = await events.get()
        if event[0] == "error":
            raise RequestError(500, event[2])
        if event[0] == "done":
            return event


async def _stream(request: web.Request, req: Completion, model_id: str, events: asyncio.Queue) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    rid = new_id(req.kind)

    async def send(body: dict) -> None:
        await response.write(f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode())

    if req.kind == "chat":
        for i in range(req.n):
            await send(chunk_body(req, rid, model_id, i, "", None, first=True))
    done = 0
    while done < req.n:
        event = await events.get()
        if event[0] == "delta":
            await send(chunk_body(req, rid, model_id, event[1], event[2], None))
        elif event[0] == "done":
            await send(chunk_body(req, rid, model_id, event[1], None if req.kind == "chat" else "", event[3]))
            done += 1
        else:  # the headers are gone: the error travels as an event, as OpenAI's streams do
            await send(RequestError(500, event[2]).body())
            break
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def build_app(server: Server) -> web.Application:
    app = web.Application(middlewares=[errors_and_auth], client_max_size=4 * 1024 * 1024)
    app[SERVER] = server
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    return app


# ----------------------------------------------------------------------------------------------- running
class Running:
    """A server on a thread of its own (tests, benchmarks): `url` while it runs, `close()` to stop it."""

    def __init__(self, server: Server, host: str = "127.0.0.1", port: int = 0):
        self.server, self.loop = server, asyncio.new_event_loop()
        started, self.error = threading.Event(), None

        async def start():
            self.runner = web.AppRunner(build_app(server), access_log=None)
            await self.runner.setup()
            site = web.TCPSite(self.runner, host, port)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]

        def run():
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(start())
            except BaseException as e:  # e.g. the port is taken: reported by the constructor
                self.error = e
                started.set()
                return
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="pico-serve", daemon=True)
        self.thread.start()
        started.wait()
        if self.error:
            raise self.error
        self.url = f"http://{host}:{self.port}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.server.batcher.close()


def serve_forever(server: Server, host: str, port: int) -> None:
    """Serve until Ctrl-C (the CLI)."""
    web.run_app(build_app(server), host=host, port=port, access_log=None, print=None, handle_signals=True)
