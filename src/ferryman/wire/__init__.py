"""Wire formats: pure translation between each provider's JSON and the canonical types.

One public module per format (`openai`, `anthropic`, `gemini`), which re-exports its streams
(`*_stream`) and, for OpenAI, its embeddings (`openai_embeddings`); `_fields` holds the typed field
readers and the path-aware `Malformed` error all three share. Each is used from both sides: `api/` parses a
client's request and renders the answer in the format the client spoke; `providers/` builds the upstream
body and parses the upstream's answer. No I/O, no HTTP, no framework imports: only `ferryman.core.canonical`
and `ferryman.errors`. Every module exposes the same functions:

    parse_chat_request(body: JSONObject) -> ChatRequest          # ingress; InvalidRequestError(param=…)
    build_chat_request(req: ChatRequest) -> JSONObject           # egress body for the upstream
    parse_chat_response(body: JSONObject) -> ChatResponse        # upstream reply → canonical
    render_chat_response(resp: ChatResponse) -> JSONObject       # canonical → client reply
    class StreamParser:   feed(event: str | None, data: JSONObject) -> list[StreamEvent]
    class StreamRenderer: render(event: StreamEvent) -> bytes; close() -> bytes   # SSE frames
"""
