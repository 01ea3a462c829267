"""The operator review station: a FastAPI app with server-side templates (`linecheck web`,
served by `linecheck up`), its JSON API, health endpoints and the group's metrics."""
