"""Load test of `medrag serve` over localhost, and the page's time to first answer.

Starts the real server (`python -m rag.cli serve`) on the sample index with the default VLM, asks
each distinct question once (serial answers), then lets `--clients` threads send `--requests` mixed
text and image closed questions at once. Reports errors, answers that differ from the serial ones
(everything but the timings), p50/p95 latency (queueing included), throughput and the server's
resident memory over the run. `--browser` first measures, in headless Chromium, page load to the
first answer for a closed image question (warm server: cold start excluded) and saves the page as
docs/images/serve.png (the README's screenshot).

    .venv/bin/python benchmarks/serve_load.py [--index indexes/sample] [--clients 16] [--requests 240] [--browser]

Writes benchmarks/results/serve_load.{json,md}. Needs the sample index (`make demo` builds it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402

from rag.defaults import resolve_generator_name  # noqa: E402
from rag.reporting import machine_description, now  # noqa: E402
from rag.serve.load import Server, ask, mixed_questions, run_load, running_server  # noqa: E402

SCREENSHOT = Path("docs/images/serve.png")


def browser_runs(server: Server, questions: list, runs: int, screenshot: Path | None) -> dict:
    """Page load to first answer, `runs` times in a fresh tab each; the last run's page as a screenshot."""
    from rag.serve.browser import ask_on_page, chromium, cited_image_question, follow_first_citation

    item = cited_image_question(server, questions)
    times, asks = [], []
    driver = chromium()
    try:
        for run in range(runs):
            last = run == runs - 1
            answer = ask_on_page(driver, server.url + "/", item.question, item.image, item.options, compare=last)
            if not last:  # the side-by-side run asks twice: its first answer is timed like the others
                times.append(answer.page_to_answer_s)
                asks.append(answer.ask_s)
        card = follow_first_citation(driver)
        if screenshot:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            height = driver.execute_script("return document.body.scrollHeight")
            driver.set_window_size(1400, min(int(height) + 40, 2400))
            driver.execute_script("window.scrollTo(0, 0)")  # the citation scrolled its card into view
            driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()
    return {"question": item.question, "image": str(item.image), "options": list(item.options), "runs": len(times),
            "page_to_answer_s": {"median": round(statistics.median(times), 3), "max": round(max(times), 3),
                                 "all": [round(t, 3) for t in times]},
            "ask_to_answer_s": {"median": round(statistics.median(asks), 3)},
            "answer": answer.text, "citation_followed": card["number"], "card_highlighted": card["highlighted"]}


def markdown(report: dict) -> str:
    load, b = report["load"], report.get("browser")
    lat, ser, rss = load["latency_s"], load["serial_latency_s"], load["rss_mb"]
    lines = ["# `medrag serve` under load", "",
             f"Command: `{report['command']}` — {report['date']} — {report['machine']}.",
             f"Generator: `{report['generator']}`; index `{report['index']}`"
             + (f"; server ready {report['startup_s']} s after start (cold: index, encoders, VLM)"
                if report["startup_s"] is not None else "; a server already running (`--url`)")
             + (f"; server threads {report['server_threads']}" if report["server_threads"] else "") + ".", "",
             f"**{load['clients']} concurrent clients, {load['requests']} requests** ({load['distinct_questions']} "
             f"distinct closed questions, half with an image) in {load['seconds']} s: "
             f"**{load['errors']} errors, {load['mismatches']} answers different from the serial ones**, "
             f"{load['throughput_rps']} requests/s.", "",
             "| latency (s) | p50 | p95 | max |", "|---|---|---|---|",
             f"| under load (queueing included) | {lat['p50']} | {lat['p95']} | {lat['max']} |",
             f"| serial, one client | {ser['p50']} | {ser['p95']} | {ser['max']} |", "",
             f"Server RSS: {rss['first_quarter_mean']} MB mean over the first quarter of the run, "
             f"{rss['last_quarter_mean']} MB over the last, {rss['max']} MB max ({rss['samples']} samples).", "",
             "Requests queue for the one model worker (FIFO), so latency under load is about the queue length "
             "times the serial latency, and every answer equals the serial answer to the same question."]
    if b:
        lines += ["", f"**Page load to first answer** (closed image question, headless Chromium, warm server): "
                      f"median {b['page_to_answer_s']['median']} s over {b['runs']} runs (max "
                      f"{b['page_to_answer_s']['max']} s); from the click on Ask: {b['ask_to_answer_s']['median']} s. "
                      f"Following citation [{b['citation_followed']}] highlighted its card: {b['card_highlighted']}.",
                  "", f"![the page]({'../../' + str(SCREENSHOT)})"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", default="indexes/sample")
    parser.add_argument("--qa", default="data/sample/qa.jsonl")
    parser.add_argument("--generator", help="default: the default VLM with its shipped weights")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--distinct", type=int, default=16, help="distinct questions the requests cycle through")
    parser.add_argument("--deadline", type=float, default=1800, help="seconds the concurrent phase may take")
    parser.add_argument("--browser", action="store_true", help="also time the page in headless Chromium")
    parser.add_argument("--browser-runs", type=int, default=5)
    parser.add_argument("--screenshot", default=str(SCREENSHOT), help="where --browser saves the page ('' for nowhere)")
    parser.add_argument("--threads", type=int, help="the server's --threads (default: all cores)")
    parser.add_argument("--url", help="measure a `medrag serve` already running at URL instead of starting one")
    parser.add_argument("--pid", type=int, help="with --url: the server's process id, for its memory")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    generator = resolve_generator_name(args.generator)
    questions = mixed_questions(args.qa, args.distinct)
    started = time.perf_counter()
    log = Path(tempfile.gettempdir()) / "serve_load.log"   # the server's own output, if something goes wrong
    extra = ["--threads", str(args.threads)] if args.threads else []
    if args.url:
        if not args.pid:
            parser.error("--url needs --pid (the server process, whose memory is sampled)")
        server = Server(args.url.rstrip("/"), args.pid)
        health = httpx.get(f"{server.url}/api/health", timeout=30).json()
        report = measure(args, server, questions, {"generator": health.get("generator"), "index": health["index"],
                                                    "startup_s": None, "server_threads": args.threads})
    else:
        with running_server(args.index, generator, log=log, extra=extra) as server:
            startup = round(time.perf_counter() - started, 1)
            report = measure(args, server, questions, {"generator": generator, "index": args.index,
                                                        "startup_s": startup, "server_threads": args.threads})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_load.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (out / "serve_load.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if report["load"]["errors"] == 0 and report["load"]["mismatches"] == 0 else 1


def measure(args: argparse.Namespace, server: Server, questions: list, facts: dict) -> dict:
    """Warm the server up, time the page if asked, then run the load."""
    with httpx.Client() as client:
        ask(client, server, questions[0])  # warm-up: the first call allocates and fills caches
    report = {"command": "python " + " ".join(sys.argv), "date": now(), "machine": machine_description(), **facts}
    if args.browser:
        screenshot = Path(args.screenshot) if args.screenshot else None
        report["browser"] = browser_runs(server, questions, args.browser_runs + 1, screenshot)
        print(f"page load to first answer: {report['browser']['page_to_answer_s']}", flush=True)
    report["load"] = run_load(server, questions, args.clients, args.requests, deadline_s=args.deadline).summary()
    return report


if __name__ == "__main__":
    sys.exit(main())
