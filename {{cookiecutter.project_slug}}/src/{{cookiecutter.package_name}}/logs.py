"""Log set-up: one line per event, the same for the API, the engine and uvicorn."""

import logging

FORMAT = "%(asctime)s [%(levelname)s] %(message)s"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT, force=True)
