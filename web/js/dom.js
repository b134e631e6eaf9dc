// Building the page: elements are made with h() and text is always set as text, never parsed as HTML, so a
// value from the API (a dataset cell, a label, an error message) can never become markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  let initial;
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "text") el.textContent = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "value" && "value" in el) initial = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, ...children);
  // After the children: a <select>'s value needs its options.
  if (initial !== undefined) el.value = initial;
  return el;
}

export function append(el, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

let counter = 0;
/** A unique element id, for pairing a <label for> with its control. */
export const uid = (prefix) => `${prefix}-${++counter}`;

/** A labelled control with a hint and a slot for the API's message about it. */
export function field({ label, control, hint, wide = false }) {
  control.id ||= uid("f");
  const error = h("p", { class: "field-error", id: `${control.id}-error`, role: "alert", hidden: true });
  const hintEl = hint ? h("p", { class: "hint", id: `${control.id}-hint` }, hint) : null;
  const described = [hintEl?.id, error.id].filter(Boolean).join(" ");
  control.setAttribute("aria-describedby", described);
  return h("div", { class: wide ? "field field-wide" : "field" },
    h("label", { for: control.id }, label), control, hintEl, error);
}

/** Show (or with null, clear) the message under a control made by field(). */
export function setFieldError(control, message) {
  const error = document.getElementById(`${control.id}-error`);
  if (!error) return;
  error.textContent = message || "";
  error.hidden = !message;
  if (message) control.setAttribute("aria-invalid", "true");
  else control.removeAttribute("aria-invalid");
}

export function statusBadge(status) {
  return h("span", { class: `badge badge-${status}`, dataset: { status } }, status);
}

export function progressBar(progress, { label = "Training progress" } = {}) {
  const step = progress?.step ?? 0;
  const total = progress?.total_steps || 0;
  const bar = h("progress", { max: total || 1, value: total ? Math.min(step, total) : 0, "aria-label": label });
  return h("div", { class: "progress" }, bar,
    h("span", { class: "progress-text" }, total ? `${step} / ${total}` : "–"));
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, "0")}m`;
}

export function ago(iso) {
  if (!iso) return "–";
  const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
  if (seconds < 45) return "just now";
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

/** A time element: relative text, the exact local time on hover. */
export function when(iso) {
  if (!iso) return h("span", { class: "muted" }, "–");
  return h("time", { datetime: iso, title: new Date(iso).toLocaleString() }, ago(iso));
}

export function num(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return String(value);
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential(2);
  return value.toPrecision(4).replace(/\.?0+$/, "");
}

export function notice(text, kind = "info") {
  return h("div", { class: `notice notice-${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

/** A table in a horizontally scrolling box, so a wide table never widens a narrow page. */
export function table({ head, rows, caption, className = "" }) {
  return h("div", { class: "table-wrap" },
    h("table", { class: className },
      caption ? h("caption", { class: "sr-only" }, caption) : null,
      h("thead", {}, h("tr", {}, head.map((cell) => h("th", { scope: "col" }, cell)))),
      h("tbody", {}, rows)));
}

export function pageHeader(title, ...actions) {
  return h("div", { class: "page-header" }, h("h1", {}, title), h("div", { class: "actions" }, actions));
}

/** Every poll and stream of a page stops when the page is left. */
export function lifetime() {
  const controller = new AbortController();
  const timers = new Set();
  return {
    signal: controller.signal,
    get alive() { return !controller.signal.aborted; },
    later(fn, ms) {
      const t = setTimeout(() => { timers.delete(t); if (!controller.signal.aborted) fn(); }, ms);
      timers.add(t);
    },
    end() {
      controller.abort();
      for (const t of timers) clearTimeout(t);
    },
  };
}

/** The message of an error, for a notice. */
export function messageOf(err) {
  if (err?.name === "AbortError") return "Cancelled.";
  return err?.message || String(err);
}

export const TASKS = {
  classification: { label: "Classification", endpoint: "classify" },
  "question-answering": { label: "Question answering", endpoint: "answer" },
  summarization: { label: "Summarization", endpoint: "summarize" },
  generation: { label: "Generation", endpoint: "generate" },
};

/** Replace an element's children (arrays flattened, unlike the native replaceChildren). */
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, ...children);
}
