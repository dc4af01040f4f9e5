"""`medrag serve`: the HTTP API and the web page over one loaded `MedRAG` (docs/design.md §5.1).

    errors.py    ApiError: a 4xx/5xx with a clear message naming the field, never a traceback
    uploads.py   uploaded images: limited in bytes and pixels, type sniffed from the content
    service.py   the loaded pipeline behind one model worker (a FIFO queue), reloads after `index add`
    guard.py     the bearer token and the body size, checked before anything is parsed
    app.py       the FastAPI app: routes, error handlers, CORS when asked for, the static page
    load.py      a server in a subprocess and concurrent HTTP clients: the load test and its benchmark
    browser.py   the page driven in headless Chromium: the browser test, the page-to-answer time
    static/      the page (HTML, JS, CSS), served locally: nothing comes from the internet
"""
