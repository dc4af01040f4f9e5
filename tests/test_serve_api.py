"""`medrag serve`'s API in process (FastAPI's TestClient) on the small index with the tiny VLM.

The answers equal `medrag ask --json` / `medrag retrieve --json`; every bad input in the issue's
list gets its 4xx with a JSON message naming the field, never a traceback or a 500; the token and
CORS are off unless asked for, and on when asked for.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from rag.corpus import read_qa
from rag.index_build import bundle_info
from rag.serve.app import create_app
from rag.serve.service import Service

TOKEN = "s3cret-token"
MAX_UPLOAD = 1024 * 1024


def _serve(index: Path, generator: str, **kwargs) -> TestClient:
    service = Service(index, generator)
    client = TestClient(create_app(service, max_upload_bytes=MAX_UPLOAD, **kwargs))
    client.__enter__()          # runs the lifespan: starts loading
    service.wait_ready(timeout=240)
    return client


@pytest.fixture(scope="module")
def client(small_index, tiny_vlm_dir):
    client = _serve(small_index, str(tiny_vlm_dir))
    yield client
    client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def guarded(small_index, tiny_vlm_dir):
    client = _serve(small_index, str(tiny_vlm_dir), token=TOKEN, cors_origins=["https://app.example.org"])
    yield client
    client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def closed_image_question(small_corpus):
    item = next(q for q in read_qa(small_corpus / "qa.jsonl") if q.options and q.image)
    return item, small_corpus / item.image


def _png(size: tuple[int, int] = (32, 32)) -> bytes:
    out = io.BytesIO()
    Image.new("L", size, 128).save(out, format="PNG")
    return out.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height: what a decompression bomb looks like to a parser."""
    data = bytearray(_png((1, 1)))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def _without_timings(data: dict) -> dict:
    return {k: v for k, v in data.items() if k != "timings_ms"}


def _refusal(response, status: int, field: str | None) -> str:
    assert response.status_code == status, response.text
    data = response.json()
    assert "Traceback" not in response.text and data["detail"]
    if field:
        assert data["field"] == field, data
    return data["detail"]


def test_health_index_examples_and_evidence_images(client, small_index):
    health = client.get("/api/health").json()
    assert health["status"] == "ready" and health["documents"] > 0 and health["version"].startswith("v-")
    assert client.get("/api/index").json() == bundle_info(small_index)
    examples = client.get("/api/examples", params={"per_domain": 1}).json()
    assert {e["domain"] for e in examples} == {"tcm_tongue", "radiology"} and len(examples) == 2
    image = client.get(examples[0]["image"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size[0] > 0
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    assert "<script src=\"/static/app.js\"" in page.text and "http" not in page.text.split("<footer")[0].lower()
    assert client.get("/static/app.js").status_code == 200
    assert "/api/ask" in client.get("/openapi.json").json()["paths"]


def test_ask_returns_the_json_of_medrag_ask(client, small_index, tiny_vlm_dir, closed_image_question, capsys):
    from rag.cli import main

    item, image = closed_image_question
    response = client.post("/api/ask", data={"question": item.question, "options": item.options},
                           files={"image": ("whatever.txt", image.read_bytes(), "text/plain")})
    assert response.status_code == 200, response.text
    served = response.json()
    argv = ["ask", item.question, "--index", str(small_index), "--generator", str(tiny_vlm_dir), "--image", str(image),
            "--json"] + [a for o in item.options for a in ("--option", o)]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert _without_timings(served) == _without_timings(printed)
    assert served["citations"] and served["mode"] == "options"
    bare = client.post("/api/ask", data={"question": item.question, "options": item.options, "retrieval": "false"})
    assert bare.json()["evidence"] == [] and bare.json()["selection"] == "retrieval off"


def test_retrieve_returns_the_json_of_medrag_retrieve(client, small_index, closed_image_question, capsys):
    from rag.cli import main

    item, image = closed_image_question
    served = client.post("/api/retrieve", data={"question": item.question, "k": "5"},
                         files={"image": ("q.png", image.read_bytes(), "image/png")}).json()
    assert main(["retrieve", item.question, "--index", str(small_index), "--image", str(image), "-k", "5", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert _without_timings(served) == _without_timings(printed)
    assert len(served["hits"]) == 5 and served["selection"]["reason"] and served["routing"]["domain"]
    image_only = client.post("/api/retrieve", files={"image": ("q.png", image.read_bytes(), "image/png")})
    assert image_only.status_code == 200 and image_only.json()["hits"]


def test_bad_uploads_are_refused_by_content(client):
    question = {"question": "What is the finding?"}
    text = b"%PDF-1.4 not an image at all"
    detail = _refusal(client.post("/api/ask", data=question, files={"image": ("scan.png", text, "image/png")}),
                      415, "image")
    assert "not an image" in detail
    bomb = _png((6000, 6000))              # 36 megapixels in a few kB: over the 25 megapixel limit
    assert len(bomb) < 200_000
    assert "pixels" in _refusal(client.post("/api/ask", data=question, files={"image": ("b.png", bomb, "image/png")}),
                                413, "image")
    huge = _png_declaring(100_000, 100_000)   # beyond Pillow's own bomb limit: refused from the header
    _refusal(client.post("/api/ask", data=question, files={"image": ("h.png", huge, "image/png")}), 413, "image")
    truncated = _png((64, 64))[:60]
    _refusal(client.post("/api/ask", data=question, files={"image": ("t.png", truncated, "image/png")}), 422, "image")
    _refusal(client.post("/api/ask", data=question, files={"image": ("e.png", b"", "image/png")}), 422, "image")


def test_oversized_uploads_are_refused_before_and_after_parsing(client):
    question = {"question": "What is the finding?"}
    just_over = _png() + b"\0" * MAX_UPLOAD       # within the body limit (upload + form room), over the file limit
    assert "bytes" in _refusal(client.post("/api/ask", data=question,
                                           files={"image": ("a.png", just_over, "image/png")}), 413, "image")
    far_over = b"\0" * (3 * MAX_UPLOAD)           # refused from Content-Length, before any parsing
    _refusal(client.post("/api/ask", data=question, files={"image": ("a.png", far_over, "image/png")}), 413, "body")

    def chunks():                                 # no Content-Length: counted while it arrives
        for _ in range(12):
            yield b"\0" * (MAX_UPLOAD // 4)

    _refusal(client.post("/api/ask", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"}),
             413, "body")


def test_bad_fields_get_422_naming_the_field(client):
    _refusal(client.post("/api/ask", data={"question": "   "}), 422, "question")
    assert "required" in _refusal(client.post("/api/ask", data={"options": ["a", "b"]}), 422, "question")
    _refusal(client.post("/api/ask", data={"question": "Which?", "mode": "vote"}), 422, "mode")
    _refusal(client.post("/api/ask", data={"question": "Which?", "mode": "options"}), 422, "options")
    _refusal(client.post("/api/ask", data={"question": "Which?", "k": "0"}), 422, "k")
    _refusal(client.post("/api/ask", data={"question": "Which?", "options": ["a", " "]}), 422, "options")
    _refusal(client.post("/api/ask", data={"question": "x" * 2001}), 422, "question")
    _refusal(client.post("/api/retrieve", data={"k": "3"}), 422, "question")


def test_evidence_ids_name_only_documents_of_the_bundle(client):
    assert "no document" in _refusal(client.get("/api/evidence/no-such-doc/image"), 404, "id")
    for traversal in ("..%2F..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "..", "a%2F..%2F..%2Fb", "%2E%2E"):
        response = client.get(f"/api/evidence/{traversal}/image")
        assert response.status_code in (400, 404), (traversal, response.status_code)
        assert "root:" not in response.text and "Traceback" not in response.text
    _refusal(client.get("/api/evidence/..%2F..%2Fetc%2Fpasswd/image"), 400, "id")
    example = client.get("/api/examples").json()[0]
    _refusal(client.get(example["image"], params={"n": 99}), 404, "n")


def test_token_is_checked_on_every_api_call(guarded, closed_image_question):
    item, _ = closed_image_question
    calls = [("get", "/api/health", {}), ("get", "/api/index", {}), ("get", "/api/examples", {}),
             ("post", "/api/ask", {"data": {"question": item.question}}), ("post", "/api/reload", {}),
             ("post", "/api/retrieve", {"data": {"question": item.question}}),
             ("get", "/api/evidence/anything/image", {})]
    for method, path, kwargs in calls:
        missing = getattr(guarded, method)(path, **kwargs)
        assert "missing token" in _refusal(missing, 401, "Authorization"), path
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = getattr(guarded, method)(path, headers={"Authorization": "Bearer nope"}, **kwargs)
        _refusal(wrong, 401, "Authorization")
    ok = guarded.get("/api/health", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    assert guarded.get("/").status_code == 200   # the page itself carries no data; it asks for the token


def test_cors_only_when_asked_for(client, guarded):
    preflight = {"Origin": "https://app.example.org", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"}
    assert "access-control-allow-origin" not in client.options("/api/ask", headers=preflight).headers
    assert "access-control-allow-origin" not in client.get("/api/health", headers={"Origin": "https://evil.example"}).headers
    allowed = guarded.options("/api/ask", headers=preflight)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example.org"
    other = guarded.options("/api/ask", headers={**preflight, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_loading_and_full_queue_get_503(small_index, tiny_vlm_dir):
    service = Service(small_index, str(tiny_vlm_dir), max_queue=0)
    with TestClient(create_app(service)) as client:   # the first requests race the load: loading or ready
        first = client.get("/api/health")
        assert first.status_code in (200, 503) and first.json()["status"] in ("loading", "ready")
        service.wait_ready(timeout=240)
        assert "queued" in _refusal(client.post("/api/ask", data={"question": "Which pattern?"}), 503, None)


def test_command_refuses_an_open_host_without_token(small_index, capsys):
    from rag.cli import main
    from rag.cli.serve import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.org"))

    assert main(["serve", "--index", str(small_index), "--host", "0.0.0.0"]) == 2
    assert "--token" in capsys.readouterr().err
    assert main(["serve", "--index", "/nonexistent/index"]) == 2
