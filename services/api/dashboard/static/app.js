// tickflow dashboard: the few behaviours htmx does not cover. Live rows and events arrive as Server-Sent Events
// (EventSource reconnects by itself and resumes from the last event id); errors from the API show in #flash.
"use strict";

function flash(text, kind) {
  const box = document.getElementById("flash");
  box.textContent = text;
  box.className = kind || "error";
  box.hidden = !text;
}

function liveState(id, state) {
  const badge = document.getElementById(id);
  if (badge) { badge.dataset.state = state; badge.textContent = state; }
}

// An API refusal (4xx/5xx) says what to fix: show its detail.
document.addEventListener("htmx:responseError", (ev) => {
  let detail = ev.detail.xhr.responseText;
  try { const body = JSON.parse(detail); detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail); } catch (e) { /* not JSON */ }
  flash(`${ev.detail.xhr.status}: ${detail}`, "error");
});
document.addEventListener("htmx:afterRequest", (ev) => { if (ev.detail.successful) flash("", ""); });

// The stacks board: each changed row replaces its own (by id) or joins the table.
function followBoard() {
  const rows = document.getElementById("board-rows");
  if (!rows) return;
  const source = new EventSource(rows.dataset.stream);
  source.onopen = () => liveState("board-live", "live");
  source.onerror = () => liveState("board-live", "reconnecting");
  source.addEventListener("row", (msg) => {
    const { id, html } = JSON.parse(msg.data);
    const template = document.createElement("template");
    template.innerHTML = html.trim();
    const row = template.content.firstElementChild;
    row.dataset.receivedAt = String(Date.now());
    const old = document.getElementById(id);
    if (old) old.replaceWith(row); else rows.appendChild(row);
    htmx.process(row);
    const empty = document.getElementById("board-empty");
    if (empty) empty.remove();
  });
}

// A run page: its events as they are appended to the log; each one refreshes the status and timeline panel.
function followRun() {
  const list = document.getElementById("run-events");
  if (!list) return;
  const source = new EventSource(list.dataset.stream);
  source.onopen = () => liveState("run-live", "live");
  source.onerror = () => liveState("run-live", "reconnecting");
  let refresh = [];
  const onEvent = (msg) => {
    const event = JSON.parse(msg.data);
    const item = document.createElement("li");
    item.className = `event ${event.type}`;
    item.dataset.seq = event.seq;
    item.dataset.receivedAt = String(Date.now());
    const head = document.createElement("b");
    head.textContent = `#${event.seq} ${event.type}`;
    const body = document.createElement("code");
    const text = JSON.stringify(event.payload);
    body.textContent = text.length > 300 ? text.slice(0, 300) + "…" : text;
    item.append(head, " ", body);
    list.appendChild(item);
    if (event.type === "ResumeRejected") {
      const box = document.getElementById("refusal");
      box.textContent = `Resume refused: ${event.payload.reason}`;
      box.hidden = false;
    }
    // The panel reads the projection, which lands an event about half a second after the log has it: refresh soon,
    // and again later, so the last event of a burst is never shown stale (one refresh per burst and per delay).
    for (const t of refresh) clearTimeout(t);
    refresh = [150, 1200, 3000].map((ms) => setTimeout(() => htmx.trigger("#run-panel", "refresh"), ms));
  };
  for (const type of JSON.parse(list.dataset.types)) source.addEventListener(type, onEvent);
}

// A run page: what its LLM calls stream, as they stream (one block per request; a step run again after a worker
// crash streams anew under a new execution, and the cut-off block says so). The stream ends once the run has.
function followTokens() {
  const pane = document.getElementById("run-tokens");
  if (!pane) return;
  const source = new EventSource(pane.dataset.stream);
  source.addEventListener("end", () => source.close());
  const blocks = new Map();
  source.addEventListener("tokens", (msg) => {
    const chunk = JSON.parse(msg.data);
    const key = `${chunk.path}|${chunk.execution}|${chunk.stream}`;
    let block = blocks.get(key);
    if (!block) {
      for (const other of pane.querySelectorAll(`.token-stream[data-path="${CSS.escape(chunk.path)}"]:not([data-outcome])`)) {
        if (other.dataset.execution !== chunk.execution) { other.dataset.outcome = "cut off"; other.querySelector(".outcome").textContent = "cut off: the step ran again"; }
      }
      block = document.createElement("div");
      block.className = "token-stream";
      Object.assign(block.dataset, { path: chunk.path, execution: chunk.execution, stream: String(chunk.stream) });
      const head = document.createElement("header");
      const name = document.createElement("b");
      name.textContent = chunk.path;
      const outcome = document.createElement("span");
      outcome.className = "outcome";
      outcome.textContent = "streaming…";
      head.append(name, ` · ${chunk.model} · attempt ${chunk.step_attempt}, request ${chunk.stream} `, outcome);
      const text = document.createElement("pre");
      block.append(head, text);
      pane.appendChild(block);
      blocks.set(key, block);
      document.getElementById("tokens-section").hidden = false;
    }
    const text = block.querySelector("pre");
    if (chunk.tool) {
      let call = text.lastElementChild;
      if (!call || call.dataset.tool !== chunk.tool || text.lastChild !== call) {
        call = document.createElement("span");
        call.className = "tool-call";
        call.dataset.tool = chunk.tool;
        call.textContent = `\n→ ${chunk.tool} `;
        text.appendChild(call);
      }
      call.append(chunk.text);
    } else if (chunk.text) {
      text.append(chunk.text);
    }
    block.dataset.receivedAt = String(Date.now());
    if (chunk.done) {
      block.dataset.outcome = chunk.outcome;
      block.querySelector(".outcome").textContent = chunk.outcome + (chunk.finish_reason ? ` (${chunk.finish_reason})` : "");
    }
  });
}

// The resume form: its fields become one JSON payload, typed as the wait's schema says.
document.addEventListener("submit", async (ev) => {
  const form = ev.target;
  if (form.id !== "resume-form") return;
  ev.preventDefault();
  let payload = {};
  try {
    for (const input of form.querySelectorAll("[name]")) {
      const type = input.dataset.type, raw = input.value;
      let value;
      if (type === "boolean") value = input.checked;
      else if (type === "integer" || type === "number") value = raw === "" ? null : Number(raw);
      else if (type === "json") value = raw.trim() === "" ? null : JSON.parse(raw);
      else value = raw;
      if (input.name === "__payload__") payload = value; else if (value !== null) payload[input.name] = value;
    }
  } catch (e) {
    flash(`The payload is not valid JSON: ${e.message}`, "error");
    return;
  }
  document.getElementById("refusal").hidden = true;
  const csrf = JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRF-Token"] || "";
  const answer = await fetch(`/runs/${encodeURIComponent(form.dataset.run)}/resume`, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify({ event: form.dataset.event, payload }),
  });
  if (!answer.ok) {
    const body = await answer.json().catch(() => ({ detail: answer.statusText }));
    flash(`${answer.status}: ${typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)}`, "error");
  } else {
    flash("Resume sent; the engine checks it against the wait's schema.", "info");
  }
});

// Runs table pager: keep the page across the table's periodic refresh.
document.addEventListener("click", (ev) => {
  const button = ev.target.closest("button.page");
  if (!button) return;
  document.getElementById("runs-offset").value = button.dataset.offset;
  htmx.trigger("#run-filters", "submit");
});

// The system page: the rebuilds of this API process, polled while the page is open.
function followRebuilds() {
  const box = document.getElementById("rebuilds");
  if (!box) return;
  const render = async () => {
    const answer = await fetch(box.dataset.source, { credentials: "same-origin" });
    if (!answer.ok) return;
    const jobs = await answer.json();
    box.replaceChildren(...jobs.slice(0, 5).map((job) => {
      const p = document.createElement("p");
      p.className = `rebuild ${job.state}`;
      const done = job.progress.events_total ? Math.round((100 * job.progress.events_done) / job.progress.events_total) : 0;
      p.textContent = `${job.job_id}: ${job.state} (${job.progress.phase}, ${done}%)` + (job.error ? ` — ${job.error}` : "");
      return p;
    }));
  };
  render();
  setInterval(render, 2000);
  document.addEventListener("htmx:afterRequest", (ev) => { if (ev.detail.elt.id === "start-rebuild") render(); });
}

document.addEventListener("DOMContentLoaded", () => { followBoard(); followRun(); followTokens(); followRebuilds(); });
