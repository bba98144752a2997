"""Cove's demo Space (cove-demo/chat): chat with SmolLM2-135M-Instruct through Cove's pipeline.

The model comes from this Hub (the runner sets HF_ENDPOINT); it loads on the first message, so
the app starts in seconds. Answers stream token by token.
"""

import os
from threading import Lock, Thread

import gradio as gr

from cove import TextIteratorStreamer, pipeline

MODEL = os.environ.get("MODEL_ID", "HuggingFaceTB/SmolLM2-135M-Instruct")
MAX_NEW_TOKENS = int(os.environ.get("MAX_NEW_TOKENS", "256"))

_chat = None
_loading = Lock()


def chat_pipeline():
    """The text-generation pipeline, made on the first message (downloads and loads once)."""
    global _chat
    with _loading:
        if _chat is None:
            _chat = pipeline("text-generation", model=MODEL)
    return _chat


def _text(content) -> str:
    """A message's text: Gradio gives a string, or a list of parts ({"type": "text", ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text") or ""
    if isinstance(content, (list, tuple)):
        return "".join(_text(part) for part in content)
    return ""


def respond(message, history):
    """Stream the assistant's answer to `message` after the conversation so far."""
    chat = chat_pipeline()
    messages = [{"role": m["role"], "content": _text(m["content"])} for m in history
                if m.get("role") in ("user", "assistant")]
    messages.append({"role": "user", "content": _text(message)})
    streamer = TextIteratorStreamer(chat.tokenizer, skip_prompt=True, skip_special_tokens=True)
    Thread(target=chat, args=(messages,), daemon=True,
           kwargs={"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False,
                   "streamer": streamer}).start()
    answer = ""
    for piece in streamer:
        answer += piece
        yield answer


demo = gr.ChatInterface(
    respond,
    title="Chat with SmolLM2",
    description=f"{MODEL} from this Hub, run by Cove's `pipeline` (the first answer waits "
                "for the model to load).",
    examples=["What is the capital of France?", "Write a haiku about the sea."],
)

if __name__ == "__main__":
    demo.launch()
