"""The HTTP side: the FastAPI app and its middleware (`app`, `browser`, `server`), the request
dependencies that hand routes their typed collaborators (`deps`), the API schemas, the rate limits, the
routes and the web UI's static files."""
