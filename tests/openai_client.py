"""Drives a Hearth coordinator with the official `openai` package, as any application would.

    python openai_client.py BASE_URL API_KEY REVOKED_KEY

Prints one JSON object: what the chat, streamed chat, completion and embeddings returned, a seeded
sampled chat twice, and the HTTP status and error body of each request that must fail. tests/openai.rs
runs it (in a private virtual environment with openai installed) and checks everything.
"""
import json
import sys
import urllib.error
import urllib.request

import openai
from openai import OpenAI

LLM = "smollm2-135m-instruct-q4_1"
GEMMA = "gemma-3-270m-q4_k_m"
EMBEDDER = "all-minilm-l6-v2"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def main():
    base, key, revoked = sys.argv[1], sys.argv[2], sys.argv[3]
    client = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)
    listed = client.models.list().data
    out = {"models": [m.id for m in listed]}
    out["holders"] = {m.id: (m.model_extra or {}).get("holders") for m in listed}
    # One model by name, as `client.models.retrieve` asks for it.
    got = client.models.retrieve(GEMMA)
    out["retrieved"] = {"id": got.id, "holders": (got.model_extra or {}).get("holders"),
                        "hearth": (got.model_extra or {}).get("hearth")}

    # A second model in the same swarm: Gemma 3, over its own tokenizer and turn format.
    gemma = client.chat.completions.create(model=GEMMA, messages=QUESTION, temperature=0, max_tokens=24)
    out["gemma_chat"] = gemma.choices[0].message.content
    out["gemma_chat_finish"] = gemma.choices[0].finish_reason
    out["gemma_chat_model"] = gemma.model

    chat = client.chat.completions.create(model=LLM, messages=QUESTION, temperature=0, max_tokens=48)
    out["chat"] = chat.choices[0].message.content
    out["chat_finish"] = chat.choices[0].finish_reason
    out["chat_usage"] = chat.usage.model_dump()
    out["chat_hearth"] = (chat.model_extra or {}).get("hearth")

    parts, finish, usage, hearth = [], None, None, None
    stream = client.chat.completions.create(
        model=LLM, messages=QUESTION, temperature=0, max_tokens=48, stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices:
            if chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            if chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
                hearth = (chunk.model_extra or {}).get("hearth")
        if chunk.usage:
            usage = chunk.usage.model_dump()
    out["chat_stream"] = "".join(parts)
    out["chat_stream_parts"] = len(parts)
    out["chat_stream_finish"] = finish
    out["chat_stream_usage"] = usage
    out["chat_stream_hearth"] = hearth

    completion = client.completions.create(
        model=LLM, prompt="The capital of France is", temperature=0, max_tokens=16
    )
    out["completion"] = completion.choices[0].text
    out["completion_finish"] = completion.choices[0].finish_reason

    stopped = client.completions.create(
        model=LLM, prompt="The capital of France is", temperature=0, max_tokens=16, stop=["\n"]
    )
    out["completion_stopped"] = stopped.choices[0].text
    out["completion_stopped_finish"] = stopped.choices[0].finish_reason

    # Seeded sampling: the same seed gives the same text, here and on one machine alone.
    sampled = [
        client.chat.completions.create(
            model=LLM, messages=QUESTION, temperature=0.9, seed=42, max_tokens=24
        ).choices[0].message.content
        for _ in range(2)
    ]
    out["sampled"] = sampled

    # The client asks for base64 by default and decodes it; ask for floats too.
    texts = ["Hello world", "Volunteer computing pools spare machines."]
    embedded = client.embeddings.create(model=EMBEDDER, input=texts)
    out["embeddings"] = [d.embedding for d in embedded.data]
    out["embeddings_hearth"] = (embedded.model_extra or {}).get("hearth")
    out["embeddings_usage"] = embedded.usage.model_dump()
    out["embeddings_float"] = [
        d.embedding
        for d in client.embeddings.create(model=EMBEDDER, input=texts, encoding_format="float").data
    ]

    def failure(call):
        try:
            call()
        except openai.APIStatusError as e:
            return {"status": e.status_code, "body": e.body}
        return {"status": 200}

    out["revoked_key"] = failure(lambda: OpenAI(base_url=base + "/v1", api_key=revoked, max_retries=0)
                                 .models.list())
    out["unknown_model"] = failure(lambda: client.chat.completions.create(
        model="gpt-9", messages=QUESTION, max_tokens=4))
    out["retrieve_unknown"] = failure(lambda: client.models.retrieve("gpt-9"))
    out["retrieve_slashed"] = failure(lambda: client.models.retrieve("meta-llama/gpt-9"))
    out["too_many_tokens"] = failure(lambda: client.chat.completions.create(
        model=LLM, messages=QUESTION, max_tokens=1_000_000))
    out["past_context"] = failure(lambda: client.completions.create(
        model=LLM, prompt="word " * 9000, max_tokens=16))
    def raw(path, body, auth=True):
        headers = {"content-type": "application/json"}
        if auth:
            headers["authorization"] = "Bearer " + key
        request = urllib.request.Request(base + path, data=body, method="POST" if body else "GET",
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return {"status": response.status, "body": json.loads(response.read())}
        except urllib.error.HTTPError as e:
            text = e.read()
            try:
                return {"status": e.code, "body": json.loads(text)}
            except ValueError:
                return {"status": e.code, "body": text.decode(errors="replace")}
        except (ConnectionError, urllib.error.URLError) as e:
            # A server may close the connection on a body past its limit before reading it all.
            return {"status": 413 if "reset" in str(e).lower() or "broken" in str(e).lower() else 0,
                    "body": str(e)}

    # The package refuses to send without a key, so this one goes without it.
    out["missing_key"] = raw("/v1/models", None, auth=False)
    out["malformed_json"] = raw("/v1/chat/completions", b'{"model": "smollm2')
    out["too_large"] = raw("/v1/completions", b'{"prompt": "' + b"x" * (64 << 20) + b'"}')
    print(json.dumps(out))


if __name__ == "__main__":
    main()
