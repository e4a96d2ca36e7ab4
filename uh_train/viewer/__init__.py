"""`uh-view`: browse a checkpoint's people at any resolution in the browser (docs/viewer.md).

    request.py  a view (seed, psi, window T(v, s), size): its checks and its `uh-generate` command
    queue.py    one render queue per device (stale requests dropped) and the bounded cache of views
    real.py     with --shards: a real sample warped into the same window
    page.py     the Bokeh document: linked pan/zoom panels, controls, overlays, the view in the URL
    server.py   the Bokeh server with the HTTP view endpoint, and what both share (`Viewer`)
    cli.py      the command line
"""
