//! End-to-end tests of the real `asgi-gate` binary against real uvicorn workers; the code is under `tests/`.
