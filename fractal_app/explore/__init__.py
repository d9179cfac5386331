"""``fractal-app explore``: a local web page to find a view with the mouse and render it.

``tiles`` maps the page's tiles to scenes, ``pictures`` renders them with the providers'
code, ``scheduler`` runs renders on threads (previews first, stale requests dropped),
``posters`` runs the one-machine lifecycle for the "render" button, and ``server`` is the
aiohttp adapter over them. ``static/`` holds the page and the Leaflet map library.
"""
