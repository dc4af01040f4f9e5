"""`medrag serve`: the HTTP API and the web page over one loaded `MedRAG` (docs/design.md §5.1).

    errors.py    ApiError: a 4xx/5xx with a clear message naming the field, never a traceback
    uploads.py   uploaded images: limited in bytes and pixels, type sniffed from the content
    service.py   the loaded pipeline behind one model worker (a FIFO queue), reloads after `index add`
    app.py       the FastAPI app: routes, bearer token, body limit, error handlers, the static page
    load.py      a server in a subprocess and concurrent HTTP clients: the load test and its benchmark
    static/      the page (HTML, JS, CSS), served locally: nothing comes from the internet
"""
