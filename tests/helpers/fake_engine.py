"""A fake OpenAI-compatible engine for router unit tests (never the only test of a path).

It answers deterministically from the request so tests can see what ragtune sent: the reply
is `echo: <system prompt> | <last user message>`. Magic words in the last user message choose
failures: TOO_LONG -> vLLM's context-length 400, BREAK -> a stream cut after two chunks,
CRASH -> a 500, SLOW -> an answer after 5 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time

from aiohttp import web

from tests.helpers.ports import free_port


class FakeEngine:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.healthy = True
        self.base_model = "HuggingFaceTB/SmolLM2-135M-Instruct"
        self.loras: dict[str, str] = {}  # runtime-loaded adapters: name -> path
        self.lora_calls: list[tuple[str, str]] = []  # ("load" | "unload", name)
        self.refuse_loads = False  # answer loads as vLLM does when its loader fails
        # answer for loaded adapters exactly as for the base model, as vLLM does for an adapter
        # whose weights change nothing (all-zero B, or no module it knows)
        self.inert_adapters = False
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> FakeEngine:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/load_lora_adapter", self._load)
        app.router.add_post("/v1/unload_lora_adapter", self._unload)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 503)

    async def _completions(self, request: web.Request) -> web.Response:
        """Prompt logprobs only (the advisor's use): one token per whitespace-separated word,
        -1 nat for a plain word, -4 for anything with digits or symbols (code looks strange)."""
        body = await request.json()
        self.requests.append(body)
        words = body["prompt"].split()
        logprobs = [None] + [
            {str(i): {"logprob": -1.0 if w.strip(".,:;!?'\"()").isalpha() else -4.0, "rank": 1}}
            for i, w in enumerate(words[1:])
        ]
        return web.json_response({
            "id": "cmpl-fake", "object": "text_completion", "model": body["model"],
            "choices": [{"index": 0, "text": "", "finish_reason": "length",
                         "prompt_logprobs": logprobs}],
            "usage": {"prompt_tokens": len(words), "completion_tokens": 1},
        })

    async def _models(self, request: web.Request) -> web.Response:
        cards = [{"id": self.base_model, "object": "model", "root": "/model", "parent": None}]
        cards += [
            {"id": n, "object": "model", "root": p, "parent": self.base_model}
            for n, p in self.loras.items()
        ]
        return web.json_response({"object": "list", "data": cards})

    async def _load(self, request: web.Request) -> web.Response:
        body = await request.json()
        name, path = body["lora_name"], body["lora_path"]
        self.lora_calls.append(("load", name))
        if name in self.loras:
            return _vllm_error(400, f"The lora adapter '{name}' has already been loaded.")
        if not os.path.isfile(os.path.join(path, "adapter_config.json")):
            return _vllm_error(404, f"Loading lora {name} failed: No adapter found for {path}")
        if self.refuse_loads:
            return _vllm_error(500, "Loading lora failed: shapes do not match")
        self.loras[name] = path
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload(self, request: web.Request) -> web.Response:
        name = (await request.json())["lora_name"]
        self.lora_calls.append(("unload", name))
        if self.loras.pop(name, None) is None:
            return _vllm_error(404, f"The lora adapter '{name}' cannot be found.")
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if body["model"] != self.base_model and body["model"] not in self.loras:
            return _vllm_error(404, f"The model `{body['model']}` does not exist.")
        messages = body["messages"]
        # Like vLLM, any conversation is answered (one without a user turn, content parts).
        last = next((m.get("content") for m in reversed(messages) if m["role"] == "user"), "")
        last = _text(last)
        system = _text(next((m.get("content") for m in messages if m["role"] == "system"), ""))
        if "TOO_LONG" in last:
            return web.json_response(
                {
                    "error": {
                        "message": "This model's maximum context length is 2048 tokens. "
                        "However, you requested 5000 tokens",
                        "type": "BadRequestError",
                        "code": 400,
                    }
                },
                status=400,
            )
        if "SLOW" in last:  # an engine that takes far longer than any timeout under test
            await asyncio.sleep(5)
        if "CRASH" in last:
            return web.json_response({"error": {"message": "boom"}}, status=500)
        # An adapter's answers name it, so tests see which one served them.
        named = body["model"] in self.loras and not self.inert_adapters
        tag = f"[{body['model']}]" if named else ""
        text = f"echo{tag}: {system} | {last}"
        usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
        base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            return web.json_response(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        pieces = [text[: len(text) // 2], text[len(text) // 2 :]]
        for i, piece in enumerate(pieces):
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            chunk = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            if "BREAK" in last and i == 1:
                request.transport.close()  # the engine dies mid-answer
                return resp
        final = {
            **base,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
        await resp.write(b"data: " + json.dumps(final).encode() + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            u = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            await resp.write(b"data: " + json.dumps(u).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp


def _text(content) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def _vllm_error(status: int, message: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "BadRequestError", "code": status}}, status=status
    )
