"""`medrag serve`: the HTTP API and the web page over one index and one answering model."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os

from rag.defaults import SAMPLE_INDEX, resolve_generator_name

TOKEN_ENV = "MEDRAG_TOKEN"


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("serve", help="serve the HTTP API and the web page (http://127.0.0.1:8000/)",
                            description="Serve the question-answering API under /api/ (OpenAPI at /docs) and a "
                                        "web page at /. Binds to 127.0.0.1; any other host needs a token.")
    p.add_argument("--index", default=str(SAMPLE_INDEX), help="index bundle to serve (reloaded after `index add`)")
    p.add_argument("--generator", help="default VLM name, saved model folder or HF model id (default: the default "
                   "VLM with its shipped weights)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help=f"require 'Authorization: Bearer TOKEN' on every API call (default: ${TOKEN_ENV}); "
                                   "required when --host is not a loopback address")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser pages from ORIGIN (e.g. https://app.example.org) to call the API; repeatable; "
                        "default: none")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest image upload accepted (default 10)")
    p.add_argument("--max-pixels", type=int, default=25_000_000, help="most pixels an uploaded image may declare")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, help="CPU threads for one answer (default: torch's, all cores); fewer on a "
                                               "machine shared with other work")
    p.set_defaults(func=cmd_serve)


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve to anything
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and not token:
        raise ValueError(f"medrag serve: binding to {args.host} makes the API reachable from other machines; "
                         f"give --token TOKEN (or set {TOKEN_ENV}) so that every API call must carry it")
    if args.max_upload_mb <= 0 or args.max_pixels <= 0 or (args.threads is not None and args.threads < 1):
        raise ValueError("medrag serve: --max-upload-mb, --max-pixels and --threads must be positive")
    import torch
    import uvicorn

    from rag.index_bundle import resolve_version
    from rag.serve.app import create_app
    from rag.serve.service import Service

    resolve_version(args.index)  # a missing or damaged index stops here, with its message, before the port opens
    if args.threads:
        torch.set_num_threads(args.threads)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("medrag serve: %(message)s"))
    logger = logging.getLogger("medrag.serve")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # "ready", reloads and failures; uvicorn itself logs warnings only

    service = Service(args.index, resolve_generator_name(args.generator), device=args.device)
    app = create_app(service, token=token, cors_origins=args.cors_origin,
                     max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels)
    where = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}/"
    print(f"medrag serve: {where} (API under /api/, OpenAPI at /docs); index {args.index}; the model loads now, "
          f"/api/health says when it is ready" + ("; API calls need the bearer token" if token else ""), flush=True)
    # One process: one copy of the model in memory; the service queues requests for it.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0
