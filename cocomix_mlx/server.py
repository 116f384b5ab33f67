"""``cocomix serve``: an OpenAI-compatible HTTP API (``/v1/models``, ``/v1/completions``,
``/v1/chat/completions``, streaming as server-sent events) with concept steering (the extension
field ``steer``), per-token concepts (``POST /v1/concepts``), a dictionary search
(``GET /v1/dictionary``) and the concept studio page at ``/``. Built on FastAPI (the ``serve``
extra); all model work runs on the :class:`studio.Studio` worker thread, one request at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

from fastapi import FastAPI, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest

from .errors import CocomixError, ContextOverflow, UnknownConcept
from .studio import Piece, Request, Studio, chat_prompt

PAGE = Path(__file__).parent / "studio_page"
STARTED = int(time.time())  # the ``created`` time of the served model
log = logging.getLogger("cocomix.serve")


class Sampling(BaseModel):
    """Fields common to both completion endpoints (OpenAI's names and ranges)."""
    model_config = ConfigDict(extra="ignore")
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0, le=1)
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    stream: bool = False
    stream_options: Optional[dict] = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: Optional[float] = Field(None, gt=0)
    logit_bias: Optional[dict[int, Annotated[float, Field(ge=-100, le=100)]]] = None
    steer: Optional[dict[str, float]] = None
    span: Literal["all", "prompt", "generated"] = "all"

    def request(self, prompt: list[int], logprobs: Optional[int]) -> Request:
        fields = {name: getattr(self, name) for name in (
            "max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "span",
            "repetition_penalty", "presence_penalty", "frequency_penalty", "logit_bias")}
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return Request(prompt, stop=stop, logprobs=logprobs, steer=dict(self.steer or {}),
                       **fields)


class CompletionBody(Sampling):
    prompt: Union[str, list[str], list[int]]
    logprobs: Optional[int] = Field(None, ge=0, le=5)
    echo: bool = False


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[dict], None] = ""

    def text(self) -> str:
        if isinstance(self.content, list):
            if any(part.get("type") != "text" for part in self.content):
                raise BadRequest("only text message parts are supported")
            return "".join(str(part.get("text", "")) for part in self.content)
        return self.content or ""


class ChatBody(Sampling):
    messages: list[Message] = Field(..., min_length=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    max_completion_tokens: Optional[int] = Field(None, ge=1)


class ConceptsBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: Optional[str] = None
    text: str
    top: int = Field(5, ge=1, le=100)


class BadRequest(CocomixError):
    """A request the API cannot serve as asked (400)."""


class NotServed(CocomixError):
    """A model name this server does not serve (404)."""


class ServerFault(CocomixError):
    """A failure that is not the request's fault (500); logged on the server."""


def _status(e: CocomixError) -> int:
    return (404 if isinstance(e, (UnknownConcept, NotServed)) else
            413 if isinstance(e, ContextOverflow) else 500 if isinstance(e, ServerFault) else 400)


def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None,
                                   "code": None}}, status_code=status)


class Job:
    """One request's place in the studio's queue, read from the event loop."""
    END = object()

    def __init__(self, studio: Studio, make):
        self.loop, self.queue = asyncio.get_running_loop(), asyncio.Queue()
        self.cancelled = threading.Event()
        studio.submit(make, self._emit, self.cancelled)

    def _emit(self, kind: str, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, item))
        except RuntimeError:  # the loop has closed (server shutting down)
            self.cancelled.set()

    def abandon(self, last) -> None:
        """Called when the request is over, ``last`` the last piece it read: stops the job
        unless that piece was its final one (a finished job is not counted as cancelled)."""
        if last is not Job.END and not last.finish_reason:
            self.cancelled.set()

    async def next(self):
        kind, item = await self.queue.get()
        if kind == "error":
            if isinstance(item, CocomixError):
                raise item
            log.error("internal error: %s: %s", type(item).__name__, item)
            raise ServerFault(f"internal error ({type(item).__name__}); see the server's log")
        return Job.END if kind == "done" else item


def _sse(data) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


def create_app(studio: Studio) -> FastAPI:
    """The FastAPI application serving ``studio``."""
    app = FastAPI(title="cocomix serve", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(CocomixError)
    async def _typed(request, e: CocomixError):
        status = _status(e)
        return error(status, str(e), {404: "not_found_error", 500: "server_error"}.get(
            status, "invalid_request_error"))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return error(400, f"{where}: {first.get('msg', 'invalid request')}" if where
                     else first.get("msg", "invalid request body"))

    @app.exception_handler(HTTPException)
    async def _http(request, e: HTTPException):
        return error(e.status_code, str(e.detail), "not_found_error" if e.status_code == 404
                     else "invalid_request_error")

    @app.exception_handler(Exception)
    async def _bug(request, e: Exception):
        log.error("internal error on %s: %s: %s", request.url.path, type(e).__name__, e)
        return error(500, f"internal error ({type(e).__name__}); see the server's log",
                     "server_error")

    def check_model(name: Optional[str]) -> None:
        if name not in (None, "", "default", studio.model_id):
            raise NotServed(f"model {name!r} is not served here; this server serves "
                            f"{studio.model_id!r} (GET /v1/models)")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": studio.model_id, "object": "model",
                                            "created": STARTED, "owned_by": "cocomix-mlx"}]}

    @app.get("/v1/studio")
    async def info():
        return studio.info()

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, http: HTTPRequest):
        check_model(body.model)
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise BadRequest("give one prompt per request")
            prompt = prompt[0]
        if body.echo and body.logprobs is not None:
            raise BadRequest("echo with logprobs is not supported; ask for one of them")
        ids = studio.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        echo = (prompt if isinstance(prompt, str) else studio.tokenizer.decode(ids)) \
            if body.echo else ""
        return await respond(http, body, body.request(ids, body.logprobs), "text_completion",
                             echo)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody, http: HTTPRequest):
        check_model(body.model)
        if body.max_completion_tokens is not None:
            body.max_tokens = body.max_completion_tokens
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        ids = chat_prompt(studio.tokenizer, messages)
        top = (body.top_logprobs or 0) if body.logprobs else None
        return await respond(http, body, body.request(ids, top), "chat.completion", "")

    @app.post("/v1/concepts")
    async def concepts(body: ConceptsBody):
        check_model(body.model)
        job = Job(studio, lambda: iter([studio.concepts(body.text, body.top)]))
        return await job.next()

    @app.get("/v1/dictionary")
    async def dictionary(q: str = "", limit: int = Query(20, ge=1, le=500)):
        return {"object": "list", "data": studio.search(q, limit)}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(PAGE / "index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        files = {p.name: p for p in PAGE.iterdir() if p.suffix in (".js", ".css", ".svg")}
        if name not in files:
            raise HTTPException(404, f"no file {name!r}")
        return FileResponse(files[name])

    async def respond(http: HTTPRequest, body: Sampling, req: Request, obj: str, echo: str):
        job = Job(studio, lambda: studio.complete(req))
        try:
            first = await job.next()  # a bad request fails here, before any byte is sent
        except BaseException:  # also a client gone before its first token: free the model
            job.cancelled.set()
            raise
        head = {"id": ("chatcmpl-" if obj.startswith("chat") else "cmpl-") + uuid.uuid4().hex,
                "created": int(time.time()), "model": studio.model_id}
        chat = obj.startswith("chat")
        if not body.stream:
            pieces = [first]
            try:
                while not pieces[-1].finish_reason:
                    if await http.is_disconnected():  # its generation stops here
                        return Response(status_code=499)
                    piece = await job.next()
                    if piece is Job.END:
                        break
                    pieces.append(piece)
            finally:
                job.abandon(pieces[-1])
            return {**head, "object": obj, "choices": [choice(pieces, chat, echo, req)],
                    "usage": usage(pieces[-1])}

        async def events():
            piece, prefix = first, echo
            try:
                if chat:
                    yield _sse({**head, "object": obj + ".chunk", "choices": [
                        {"index": 0, "delta": {"role": "assistant", "content": ""},
                         "logprobs": None, "finish_reason": None}]})
                while True:
                    yield _sse({**head, "object": obj + ".chunk" if chat else obj,
                                "choices": [chunk(piece, chat, prefix, req)]})
                    prefix = ""
                    if piece.finish_reason:
                        break
                    piece = await job.next()
                if (body.stream_options or {}).get("include_usage"):
                    yield _sse({**head, "object": obj + ".chunk" if chat else obj,
                                "choices": [], "usage": usage(piece)})
                yield _sse("[DONE]")
            except CocomixError as e:  # after the first token: reported in the stream
                kind = "server_error" if _status(e) == 500 else "invalid_request_error"
                yield _sse({"error": {"message": str(e), "type": kind}})
            finally:
                job.abandon(piece)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    return app


def usage(last: Piece) -> dict:
    return {"prompt_tokens": last.prompt_tokens, "completion_tokens": last.completion_tokens,
            "total_tokens": last.prompt_tokens + last.completion_tokens}


def _logprobs(pieces: list[Piece], chat: bool, offset: int = 0) -> Optional[dict]:
    pieces = [p for p in pieces if p.logprob is not None]
    if chat:
        def entry(token, lp):
            return {"token": token, "logprob": lp, "bytes": list(token.encode("utf-8"))}

        return {"content": [{**entry(p.token_text, p.logprob),
                             "top_logprobs": [entry(t, lp) for t, lp in p.top]} for p in pieces]}
    offsets, at = [], offset
    for p in pieces:
        offsets.append(at)
        at += len(p.token_text)
    return {"tokens": [p.token_text for p in pieces],
            "token_logprobs": [p.logprob for p in pieces],
            "top_logprobs": [dict(p.top) for p in pieces], "text_offset": offsets}


def choice(pieces: list[Piece], chat: bool, echo: str, req: Request) -> dict:
    text = echo + "".join(p.text for p in pieces)
    lp = _logprobs(pieces, chat) if req.logprobs is not None else None
    out = {"index": 0, "logprobs": lp, "finish_reason": pieces[-1].finish_reason}
    if chat:
        return {**out, "message": {"role": "assistant", "content": text}}
    return {**out, "text": text}


def chunk(piece: Piece, chat: bool, prefix: str, req: Request) -> dict:
    lp = _logprobs([piece], chat) if req.logprobs is not None else None
    out = {"index": 0, "logprobs": lp, "finish_reason": piece.finish_reason}
    if chat:
        return {**out, "delta": {"content": piece.text} if piece.text or
                not piece.finish_reason else {}}
    return {**out, "text": prefix + piece.text}


def serve(studio: Studio, sock, log_level: str = "warning") -> None:
    """Serve ``studio`` on the bound socket ``sock`` until interrupted."""
    import uvicorn

    config = uvicorn.Config(create_app(studio), log_level=log_level, access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
