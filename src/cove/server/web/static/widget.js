// The inference widget of a model page (templates/_widget.html). Plain JS, no build step.
// It calls this server's serving endpoints with the visitor's session cookie and the page's
// CSRF token in X-CSRF-Token (the server refuses a signed-in cookie without it), so a
// signed-in visitor runs their private models too.
(() => {
  "use strict";

  // Greedy: the demo's SmolLM2-135M (4-bit-derived) is unsure of many first tokens (for "What
  // is the capital of France?" P("The") = 0.18, P("L") = 0.14), so temperature 0.2 with
  // top-p 0.9 still went off into "L'Étoile, la France, la France, ..." about one time in five.
  const CHAT = { temperature: 0, max_tokens: 256 };

  function el(tag, props = {}, text) {
    const node = document.createElement(tag);
    Object.assign(node, props);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function table(head, rows) {
    const t = el("table", { className: "widget-table" });
    const tr = el("tr");
    head.forEach((h) => tr.append(el("th", { scope: "col" }, h)));
    t.append(el("thead")); t.tHead.append(tr);
    const body = el("tbody");
    rows.forEach((row) => {
      const r = el("tr");
      row.forEach((cell, i) => r.append(el("td", i === row.length - 1 && typeof cell === "number"
        ? { className: "num" } : {}, typeof cell === "number" ? cell.toFixed(3) : String(cell))));
      body.append(r);
    });
    t.append(body);
    return t;
  }

  function errorText(status, body) {
    if (body && typeof body === "object") {
      const e = body.error;
      if (e && typeof e === "object" && e.message) return e.message;
      if (typeof e === "string") return e;
      if (body.message) return body.message;
    }
    return `The server answered ${status}.`;
  }

  class WidgetError extends Error {
    constructor(message, code) { super(message); this.code = code; }
  }

  async function post(url, payload, signal, csrf) {
    const response = await fetch(url, {
      method: "POST", credentials: "same-origin", signal,
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(payload),
    });
    if (!response.ok) {
      let body = null;
      try { body = await response.json(); } catch (_) { /* not JSON */ }
      const code = body && body.error && typeof body.error === "object" ? body.error.code : null;
      throw new WidgetError(errorText(response.status, body), code);
    }
    return response;
  }

  // Server-sent events: calls onData with each `data:` payload (parsed JSON) until [DONE].
  async function readEvents(response, onData) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") return;
          const parsed = JSON.parse(data);
          if (parsed.error) throw new WidgetError(errorText(0, parsed));
          onData(parsed);
        }
      }
    }
  }

  function setup(widget) {
    const model = widget.dataset.model;
    const task = widget.dataset.task;
    const csrf = widget.dataset.csrf;
    const form = widget.querySelector("[data-widget-form]");
    const send = form.querySelector("[data-send]");
    const stop = form.querySelector("[data-stop]");
    const status = form.querySelector("[data-status]");
    const output = widget.querySelector("[data-output]");
    const modelPath = model.split("/").map(encodeURIComponent).join("/");
    const messages = []; // the conversation so far (chat)
    let controller = null;

    send.disabled = false;

    form.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing
          && e.target.matches("textarea[data-enter-sends]")) {
        e.preventDefault();
        form.requestSubmit();
      }
    });
    stop.addEventListener("click", () => { if (controller) controller.abort(); });

    function busy(on, text) {
      send.disabled = on;
      stop.hidden = !(on && task === "text-generation");
      output.setAttribute("aria-busy", on ? "true" : "false");
      status.textContent = text || "";
    }

    function showError(message) {
      output.append(el("p", { className: "widget-error", role: "alert" }, message));
    }

    async function chat(text) {
      messages.push({ role: "user", content: text });
      output.append(el("p", { className: "turn user" }, text));
      const reply = el("p", { className: "turn assistant" });
      output.append(reply);
      let response;
      try {
        try {
          response = await post("/v1/chat/completions", {
            model, messages, stream: true, ...CHAT,
          }, controller.signal, csrf);
        } catch (e) {
          if (e.code !== "no_chat_template") throw e;
          // A base model without a chat template: continue the text instead.
          response = await post("/v1/completions", {
            model, prompt: text, stream: true, ...CHAT,
          }, controller.signal, csrf);
        }
      } catch (e) {
        messages.pop(); // unanswered: not part of the conversation
        reply.remove();
        throw e;
      }
      status.textContent = "Writing…";
      try {
        await readEvents(response, (event) => {
          const choice = event.choices && event.choices[0];
          if (!choice) return;
          const piece = choice.delta ? choice.delta.content : choice.text;
          if (piece) reply.textContent += piece;
        });
      } finally {
        messages.push({ role: "assistant", content: reply.textContent });
      }
    }

    async function run(data) {
      const url = `/models/${modelPath}`;
      if (task === "sentence-similarity") {
        const sentences = data.get("text").split("\n").map((s) => s.trim()).filter(Boolean);
        const scores = await (await post(url, {
          inputs: { source_sentence: data.get("source"), sentences },
        }, controller.signal, csrf)).json();
        output.replaceChildren(table(["Sentence", "Similarity"],
          sentences.map((s, i) => [s, scores[i]])));
        return;
      }
      let payload = { inputs: data.get("text") };
      if (task === "question-answering") {
        payload = { inputs: { question: data.get("question"), context: data.get("text") } };
      } else if (task === "zero-shot-classification") {
        payload.parameters = {
          candidate_labels: data.get("labels").split(",").map((s) => s.trim()).filter(Boolean),
        };
      }
      const result = await (await post(url, payload, controller.signal, csrf)).json();
      output.replaceChildren(render(result));
    }

    function render(result) {
      if (task === "text-classification") {
        const labels = Array.isArray(result[0]) ? result[0] : result;
        return table(["Label", "Score"], labels.map((r) => [r.label, r.score]));
      }
      if (task === "zero-shot-classification") {
        return table(["Label", "Score"], result.map((r) => [r.label, r.score]));
      }
      if (task === "token-classification") {
        if (!result.length) return el("p", {}, "No entities found.");
        return table(["Entity", "Text", "Score"],
          result.map((r) => [r.entity_group || r.entity, r.word, r.score]));
      }
      if (task === "fill-mask") {
        const options = Array.isArray(result[0]) ? result[0] : result;
        return table(["Word", "Sentence", "Score"],
          options.map((r) => [r.token_str, r.sequence, r.score]));
      }
      if (task === "question-answering") {
        const answers = Array.isArray(result) ? result : [result];
        return table(["Answer", "Score"], answers.map((r) => [r.answer, r.score]));
      }
      // feature-extraction: a sentence-transformers model's vector, or one per token
      let vector = result;
      let tokens = 0;
      while (Array.isArray(vector[0])) {
        if (Array.isArray(vector[0][0])) tokens = vector[0].length;
        vector = vector[0];
      }
      const box = el("div");
      box.append(el("p", {}, tokens
        ? `${tokens} token vectors of ${vector.length} dimensions; the first one begins:`
        : `${vector.length} dimensions; the first ones:`));
      box.append(el("pre", {}, vector.slice(0, 8).map((x) => x.toFixed(4)).join("  ")));
      return box;
    }

    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      if (controller) return;
      const data = new FormData(form);
      controller = new AbortController();
      busy(true, "Running… (a model's first call loads it)");
      try {
        if (task === "text-generation") {
          const text = data.get("text").trim();
          if (!text) return;
          form.elements.text.value = "";
          await chat(text);
        } else {
          await run(data);
        }
      } catch (err) {
        if (err.name === "AbortError") {
          status.textContent = "Stopped.";
        } else {
          if (task !== "text-generation") output.replaceChildren();
          showError(err instanceof WidgetError ? err.message : `The request failed: ${err.message}`);
        }
      } finally {
        const stopped = controller.signal.aborted;
        controller = null;
        busy(false, stopped ? "Stopped." : "");
        form.elements.text.focus();
      }
    });
  }

  document.querySelectorAll("[data-widget]").forEach(setup);
})();
