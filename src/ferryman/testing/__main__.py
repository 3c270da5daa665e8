"""`python -m ferryman.testing openai|anthropic|gemini --port N`: serve one fake until interrupted."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from ferryman.testing._server import FakeServer
from ferryman.testing.anthropic import FakeAnthropic
from ferryman.testing.gemini import FakeGemini
from ferryman.testing.openai import FakeOpenAI

FAKES: dict[str, type[FakeServer]] = {"openai": FakeOpenAI, "anthropic": FakeAnthropic, "gemini": FakeGemini}


def build_parser() -> argparse.ArgumentParser:
    """The command line: which provider to fake, and where."""
    parser = argparse.ArgumentParser(
        prog="python -m ferryman.testing",
        description="Serve a fake AI provider that speaks its real wire format and echoes every prompt.",
    )
    parser.add_argument("provider", choices=sorted(FAKES))
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (default: any free port)")
    parser.add_argument("--api-key", default=None, help="accept only this key (default: any key)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM; print the base URL first so scripts can pick it up."""
    args = build_parser().parse_args(argv)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    with FAKES[args.provider](host=args.host, port=args.port, api_key=args.api_key) as fake:
        print(f"fake {args.provider} serving on {fake.base_url}", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
