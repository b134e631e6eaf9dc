// The public API, from the browser: one fetch wrapper that adds the key, turns error bodies into ApiError, and
// asks for a key on a 401; a server-sent-events reader over fetch (EventSource cannot send Authorization); and a
// job-event follower that reconnects with Last-Event-ID.

const KEY = "ftserve.apiKey";
export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `HTTP ${status}`);
    this.status = status;
    this.type = error?.type || "internal";
    this.details = Array.isArray(error?.details) ? error.details : [];
  }
}

export function storedKey() {
  return sessionStorage.getItem(KEY);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY);
  document.dispatchEvent(new CustomEvent("ftserve:key"));
}

let asking = null; // one prompt at a time, however many calls were refused

/** Show the key dialog and resolve once a key is entered. The key goes to sessionStorage: this tab only. */
export function askForKey(reason) {
  const dialog = document.getElementById("key-dialog");
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  document.getElementById("key-reason").textContent = reason;
  if (!dialog.open) {
    input.value = "";
    dialog.showModal();
  }
  input.focus();
  if (asking) return asking;
  asking = new Promise((resolve) => {
    const done = (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY, key);
      form.removeEventListener("submit", done);
      dialog.close();
      asking = null;
      document.dispatchEvent(new CustomEvent("ftserve:key"));
      resolve(key);
    };
    form.addEventListener("submit", done);
  });
  return asking;
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's error page): the status says enough
  }
  return new ApiError(response.status, body?.error || { type: "internal", message: `HTTP ${response.status}` });
}

/**
 * Call the API. `json` is sent as a JSON body; `body` as it is (FormData). With `raw`, the Response is returned
 * (a stream); else the parsed JSON, the text of a non-JSON answer, or null for a 204. A 401 opens the key prompt
 * and the call is sent again with the key entered.
 */
export async function api(path, { method = "GET", json, body, headers = {}, signal, raw = false } = {}) {
  for (;;) {
    const sent = new Headers(headers);
    const key = storedKey();
    if (key) sent.set("Authorization", `Bearer ${key}`);
    let payload = body;
    if (json !== undefined) {
      sent.set("Content-Type", "application/json");
      payload = JSON.stringify(json);
    }
    const response = await fetch(path, { method, headers: sent, body: payload, signal, cache: "no-store" });
    if (response.status === 401) {
      if (key) sessionStorage.removeItem(KEY);
      await askForKey(key ? "That key was refused: enter a valid API key." : "This server needs an API key.");
      continue;
    }
    if (!response.ok) throw await errorOf(response);
    if (raw) return response;
    if (response.status === 204) return null;
    const type = response.headers.get("content-type") || "";
    return type.includes("json") ? response.json() : response.text();
  }
}

let openapi = null;

/** The API's OpenAPI document (defaults and bounds of every request field), read once per page load. */
export function schema() {
  openapi ??= api("/openapi.json").catch((err) => {
    openapi = null;
    throw err;
  });
  return openapi;
}

/** The properties of a named component schema, `$ref`s left as they are. */
export async function componentProperties(name) {
  const doc = await schema();
  return doc.components.schemas[name]?.properties || {};
}

/** Server-sent events from a fetch Response: yields {id, event, data} as each event's blank line arrives. */
export async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { id: null, event: "message", data: [] };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline).replace(/\r$/, "");
        buffer = buffer.slice(newline + 1);
        if (line === "") {
          if (event.data.length) yield { id: event.id, event: event.event, data: event.data.join("\n") };
          event = { id: null, event: "message", data: [] };
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "data") event.data.push(text);
          else if (field === "event") event.event = text;
          else if (field === "id") event.id = text;
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

/**
 * Follow a job's events as they are written: `onEvent(event)` for each, oldest first, each once. A dropped
 * stream (a restarted API, a proxy's timeout) is opened again with `Last-Event-ID`, so nothing is missed or
 * repeated. `onState("live" | "reconnecting" | "ended", detail)` says where it stands. Ends after the terminal
 * status event, or when `signal` aborts.
 */
export async function followJob(jobId, { onEvent, onState = () => {}, signal }) {
  let lastId = 0;
  let failures = 0;
  while (!signal?.aborted) {
    let terminal = false;
    try {
      const headers = { Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = String(lastId);
      const response = await api(`/jobs/${encodeURIComponent(jobId)}/events`, { headers, signal, raw: true });
      onState("live");
      for await (const message of readEvents(response)) {
        if (message.event === "error") throw new ApiError(500, JSON.parse(message.data).error);
        const event = JSON.parse(message.data);
        if (event.id <= lastId) continue;
        lastId = event.id;
        failures = 0;
        onEvent(event);
        if (event.type === "status" && TERMINAL.has(event.data?.status)) terminal = true;
      }
      if (terminal) {
        onState("ended");
        return;
      }
      failures += 1; // closed before the end: open it again
      onState("reconnecting");
    } catch (err) {
      if (signal?.aborted) return;
      if (err instanceof ApiError && (err.status === 404 || err.status === 422)) {
        onState("ended", err);
        return;
      }
      failures += 1;
      onState("reconnecting", err);
    }
    // Back off while the server stays away; any event received resets it.
    await sleep(Math.min(8000, 250 * 2 ** (failures - 1)), signal);
  }
}
