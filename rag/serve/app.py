"""The FastAPI app of `medrag serve`: the API under /api/, the page at /, OpenAPI at /docs.

Every refusal is JSON, {"detail": message, "field": name}, with a 4xx status that says what kind:
401 token, 404 unknown id, 400 a path where an id belongs, 413 too big (bytes or pixels), 415 not an
image, 422 a missing, empty or malformed field, 503 still loading or queue full. Errors the
library raises for bad input (ValueError, as the command line treats them) are 422; anything else is
a bug: the client gets a 500 with no traceback, the server log gets the traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool

from rag.serve.errors import ApiError
from rag.serve.guard import Guard
from rag.serve.service import Service
from rag.serve.uploads import MAX_BYTES, MAX_PIXELS, read_image

log = logging.getLogger("medrag.serve")
STATIC = Path(__file__).parent / "static"
FORM_OVERHEAD = 256 * 1024          # room for the text fields and multipart framing beside the image
MAX_QUESTION_CHARS = 2000
MAX_OPTIONS = 10
MAX_OPTION_CHARS = 300
# The page may use only what this server sends: no CDN, no inline script.
PAGE_POLICY = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"


def create_app(service: Service, token: str | None = None, cors_origins: Sequence[str] = (),
               max_upload_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> FastAPI:
    """The app over `service`, which it starts loading on startup. `token`: required on every /api/ call."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        service.start()
        yield
        service.close()

    app = FastAPI(title="medvlm-rag", version=_version(), lifespan=lifespan,
                  summary="Evidence-grounded medical VQA: retrieval, adaptive selection and a VLM that cites.")
    app.state.limits = {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels}
    _add_error_handlers(app)
    app.include_router(_api(service))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY,
                                                            "X-Content-Type-Options": "nosniff"})

    app.add_middleware(Guard, token=token, max_body=max_upload_bytes + FORM_OVERHEAD)
    if cors_origins:  # added last, so outermost: preflight requests carry no token and must pass the guard
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization"])
    return app


def _version() -> str:
    try:
        return version("medvlm-rag")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0+unknown"


def _api(service: Service) -> APIRouter:
    api = APIRouter(prefix="/api")

    @api.post("/ask", summary="Answer a question (about an uploaded image) from evidence, with citations")
    async def ask(request: Request,
                  question: Annotated[str, Form(description="the question")],
                  image: Annotated[UploadFile | None, File(description="image the question is about")] = None,
                  options: Annotated[list[str] | None, Form(description="answer options (repeat the field)")] = None,
                  mode: Annotated[Literal["auto", "generate", "options"], Form()] = "auto",
                  k: Annotated[int | None, Form(ge=1, le=50, description="keep exactly k items")] = None,
                  retrieval: Annotated[bool, Form(description="false: answer without evidence")] = True,
                  abstain: Annotated[bool, Form(description="false: answer even when evidence is weak")] = True,
                  max_new_tokens: Annotated[int, Form(ge=1, le=256)] = 48) -> dict[str, Any]:
        """The JSON of `medrag ask --json`."""
        question = _question(question)
        options = _options(options)
        if mode == "options" and not options:
            raise ApiError(422, "options: mode 'options' needs at least one option", "options")
        picture = await _image(request, image)
        return await service.run(service.ask, question, picture, options, mode, k, retrieval, abstain, max_new_tokens)

    @api.post("/retrieve", summary="Ranked evidence with scores, the routing and the selection cut")
    async def retrieve(request: Request,
                       question: Annotated[str | None, Form()] = None,
                       image: Annotated[UploadFile | None, File()] = None,
                       k: Annotated[int, Form(ge=1, le=50)] = 10) -> dict[str, Any]:
        """The JSON of `medrag retrieve --json`: hits, routing, channels, timings, selection."""
        picture = await _image(request, image)
        if question is not None:
            question = _question(question) if picture is None else (question.strip() or None)
        if question is None and picture is None:
            raise ApiError(422, "question: give a question, an image, or both", "question")
        return await service.run(service.retrieve, question, picture, k)

    @api.get("/index", summary="What `medrag index info --json` says about the served index")
    async def index() -> dict[str, Any]:
        return await run_in_threadpool(service.index_info)

    @api.get("/health", summary="ready, loading or failed (503 until ready)")
    def health() -> JSONResponse:
        data = service.health()
        return JSONResponse(data, status_code=200 if data["status"] == "ready" else 503)

    @api.post("/reload", summary="Serve the index's newest version now (also checked before every request)")
    async def reload() -> dict[str, Any]:
        before = service.version
        health = await service.run(service.health)  # every job starts by switching to the newest version
        return {"reloaded": health["version"] != before, "previous_version": before, **health}

    @api.get("/examples", summary="A few indexed images per domain, for the page's example picker")
    def examples(per_domain: Annotated[int, Query(ge=1, le=10)] = 2) -> list[dict[str, Any]]:
        return service.examples(per_domain)

    @api.get("/evidence/{doc_id:path}/image", summary="An image of an indexed document (only those)",
             response_class=FileResponse)
    def evidence_image(doc_id: str, n: Annotated[int, Query(ge=0)] = 0) -> FileResponse:
        path = service.evidence_image(doc_id, n)
        try:
            with Image.open(path) as img:   # the type from the content, like uploads
                media_type = Image.MIME.get(img.format or "", "application/octet-stream")
        except OSError:
            raise ApiError(404, f"the image file of {doc_id!r} is not readable on the server", "id") from None
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=3600",
                                                                  "X-Content-Type-Options": "nosniff"})

    return api


def _question(question: str) -> str:
    question = question.strip()
    if not question:
        raise ApiError(422, "question: must not be empty", "question")
    if len(question) > MAX_QUESTION_CHARS:
        raise ApiError(422, f"question: {len(question)} characters is over the limit of {MAX_QUESTION_CHARS}",
                       "question")
    return question


def _options(options: list[str] | None) -> list[str] | None:
    if not options:
        return None
    if len(options) > MAX_OPTIONS:
        raise ApiError(422, f"options: {len(options)} given, at most {MAX_OPTIONS}", "options")
    cleaned = [o.strip() for o in options]
    for i, option in enumerate(cleaned, 1):
        if not option or len(option) > MAX_OPTION_CHARS:
            raise ApiError(422, f"options: option {i} is empty or longer than {MAX_OPTION_CHARS} characters",
                           "options")
    return cleaned


async def _image(request: Request, upload: UploadFile | None) -> Image.Image | None:
    """The uploaded image checked and decoded, or None when no file was sent."""
    if upload is None:
        return None
    limits = request.app.state.limits
    data = await upload.read(limits["max_upload_bytes"] + 1)
    if not data and not upload.filename:  # an HTML form's file input left empty
        return None
    return await run_in_threadpool(read_image, data, "image", limits["max_upload_bytes"], limits["max_pixels"])


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.to_json(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default lists pydantic's records; a person wants the field and one sentence.
        problems = exc.errors()
        first = problems[0] if problems else {}
        field = str(first.get("loc", ["", "request"])[-1])
        message = "; ".join(f"{p['loc'][-1]}: {p['msg'].lower()}" for p in problems) or "invalid request"
        return JSONResponse({"detail": message, "field": field}, status_code=422)

    @app.exception_handler(ValueError)
    async def bad_value(_: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); the server log has the details"},
                            status_code=500)
