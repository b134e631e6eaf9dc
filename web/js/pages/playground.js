// Playground, one tab per task: classify (labels with scores as bars), answer (the span highlighted in the
// context), summarize, and generate (streamed as it is produced, with the generation parameters). Parameter
// defaults and bounds come from the API's OpenAPI document.

import { api, componentProperties, readEvents } from "../api.js";
import {
  clear, field, fill, h, lifetime, messageOf, notice, num, pageHeader, setFieldError, TASKS,
} from "../dom.js";

const TABS = {
  classify: { task: "classification", label: "Classify" },
  answer: { task: "question-answering", label: "Answer" },
  summarize: { task: "summarization", label: "Summarize" },
  generate: { task: "generation", label: "Generate" },
};
const SUMMARIZE_PARAMS = ["max_new_tokens", "min_new_tokens", "num_beams", "length_penalty", "no_repeat_ngram_size"];
const GENERATE_PARAMS = ["max_new_tokens", "min_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty",
  "seed"];

const sentence = (name) => name.replaceAll("_", " ").replace(/^./, (c) => c.toUpperCase());

/** Inputs for request fields, from their schema: empty means the API's default. */
async function paramInputs(component, names) {
  const props = await componentProperties(component);
  return names.filter((n) => n in props).map((name) => {
    const prop = props[name];
    const t = prop.type ? prop : (prop.anyOf || []).find((p) => p.type && p.type !== "null") || {};
    const input = h("input", { name, type: "number", step: t.type === "integer" ? "1" : "any",
      placeholder: prop.default === undefined || prop.default === null ? "none" : String(prop.default) });
    const hint = prop.default === undefined || prop.default === null ? "Default: none" : `Default: ${num(prop.default)}`;
    return { name, input, el: field({ label: sentence(name), control: input, hint }) };
  });
}

function readParams(inputs) {
  const out = {};
  for (const { name, input } of inputs) if (input.value.trim() !== "") out[name] = Number(input.value);
  return out;
}

/** The model picker: the newest model of the task (the API's default), or a name, alias or version. */
async function modelPicker(task, wanted, signal) {
  const select = h("select", { name: "model" }, h("option", { value: "" }, `Newest ${TASKS[task].label.toLowerCase()} model`));
  const page = await api(`/models?task=${encodeURIComponent(task)}&limit=100`, { signal });
  for (const m of page.data) {
    const group = h("optgroup", { label: m.name }, h("option", { value: m.name }, `${m.name} (production, else newest)`),
      Object.keys(m.aliases || {}).map((a) => h("option", { value: `${m.name}@${a}` }, `${m.name}@${a} → v${m.aliases[a]}`)),
      m.latest_version ? h("option", { value: `${m.name}:${m.latest_version}` }, `${m.name}:${m.latest_version}`) : null);
    select.append(group);
  }
  if (wanted && ![...select.options].some((o) => o.value === wanted)) select.append(h("option", { value: wanted }, wanted));
  select.value = wanted || "";
  return { select, count: page.data.length };
}

function answered(result) {
  return h("p", { class: "served-by muted" }, "Answered by ", h("span", { class: "mono", dataset: { model: result.model } }, result.model));
}

function classifyTab(ctx) {
  const text = h("textarea", { name: "text", rows: "4", required: true, placeholder: "A film I would watch again." });
  ctx.form.append(field({ label: "Text", control: text, wide: true }));
  ctx.run = async () => {
    const result = await api("/classify", { method: "POST", signal: ctx.signal,
      json: { model: ctx.model(), inputs: text.value, top_k: null } });
    const ranked = result.predictions[0];
    fill(ctx.output, answered(result), h("ol", { class: "scores", id: "scores" }, ranked.map((p, i) => {
      const fill = h("span", { class: "bar-fill" });
      fill.style.width = `${(p.score * 100).toFixed(1)}%`; // CSSOM, allowed under the page's CSP
      return h("li", { class: i === 0 ? "score top" : "score", dataset: { label: p.label, score: String(p.score) } },
        h("span", { class: "score-label" }, p.label),
        h("span", { class: "bar", role: "img", "aria-label": `${p.label}: ${(p.score * 100).toFixed(1)}%` }, fill),
        h("span", { class: "score-value" }, `${(p.score * 100).toFixed(1)}%`));
    })));
  };
  return [text];
}

function answerTab(ctx) {
  const context = h("textarea", { name: "context", rows: "6", required: true,
    placeholder: "The context the answer is taken from." });
  const question = h("input", { name: "question", required: true, autocomplete: "off", placeholder: "What…?" });
  ctx.form.append(field({ label: "Context", control: context, wide: true }),
    field({ label: "Question", control: question, wide: true }));
  ctx.run = async () => {
    const result = await api("/answer", { method: "POST", signal: ctx.signal,
      json: { model: ctx.model(), context: context.value, question: question.value } });
    const a = result.answers[0];
    const shown = context.value;
    fill(ctx.output, answered(result),
      h("p", {}, h("strong", {}, "Answer: "), h("span", { id: "answer-text" }, a.answer || "(no answer)"),
        h("span", { class: "muted" }, ` · score ${num(a.score)}`)),
      h("blockquote", { class: "context", id: "answer-context" }, shown.slice(0, a.start),
        h("mark", {}, shown.slice(a.start, a.end)), shown.slice(a.end)));
  };
  return [context, question];
}

async function summarizeTab(ctx) {
  const text = h("textarea", { name: "document", rows: "8", required: true, placeholder: "A document to summarize." });
  const params = await paramInputs("SummarizeRequest", SUMMARIZE_PARAMS);
  ctx.form.append(field({ label: "Document", control: text, wide: true }),
    h("details", { class: "params" }, h("summary", {}, "Parameters"), h("div", { class: "grid" }, params.map((p) => p.el))));
  ctx.run = async () => {
    const result = await api("/summarize", { method: "POST", signal: ctx.signal,
      json: { model: ctx.model(), inputs: text.value, ...readParams(params) } });
    fill(ctx.output, answered(result), h("p", { class: "summary", id: "summary" }, result.summaries[0]));
  };
  ctx.params = params;
  return [text];
}

async function generateTab(ctx) {
  const prompt = h("textarea", { name: "prompt", rows: "4", required: true, placeholder: "Once upon a time" });
  const params = await paramInputs("GenerateRequest", GENERATE_PARAMS);
  const sample = h("input", { type: "checkbox", name: "do_sample", id: "do-sample" });
  const stop = h("input", { name: "stop", autocomplete: "off", spellcheck: "false", placeholder: "none (e.g. \\n\\n)" });
  ctx.form.append(field({ label: "Prompt", control: prompt, wide: true }),
    h("details", { class: "params", open: true }, h("summary", {}, "Parameters"),
      h("div", { class: "grid" }, params.map((p) => p.el),
        h("div", { class: "field checkbox" }, sample, h("label", { for: "do-sample" }, "Sample (do_sample)")),
        field({ label: "Stop sequences", control: stop, hint: "Comma-separated; \\n for a newline" }))));
  ctx.params = params;
  ctx.run = async () => {
    const body = { model: ctx.model(), prompt: prompt.value, stream: true, do_sample: sample.checked, ...readParams(params) };
    const stops = stop.value.split(",").map((s) => s.replaceAll("\\n", "\n").replaceAll("\\t", "\t")).filter((s) => s);
    if (stops.length) body.stop = stops;
    const out = h("div", { class: "generation", id: "generation", dataset: { chunks: "0" }, "aria-live": "polite" },
      h("span", { class: "prompt-echo" }, prompt.value));
    const produced = h("span", { class: "produced" });
    out.append(produced, h("span", { class: "caret", "aria-hidden": "true" }));
    const status = h("p", { class: "muted", id: "generation-status", role: "status" }, "Generating…");
    fill(ctx.output, out, status);
    const response = await api("/generate", { method: "POST", json: body, signal: ctx.signal, raw: true });
    const servedBy = response.headers.get("X-Model");
    let chunks = 0;
    for await (const message of readEvents(response)) {
      const data = JSON.parse(message.data);
      if (message.event === "token") {
        chunks += 1;
        produced.append(data.text);
        out.dataset.chunks = String(chunks);
      } else if (message.event === "done") {
        out.dataset.done = "true";
        out.querySelector(".caret")?.remove();
        status.textContent = `${data.tokens} tokens · finished by ${data.finish_reason} · ${chunks} streamed pieces`
          + (servedBy ? ` · ${servedBy}` : "");
      } else if (message.event === "error") {
        out.querySelector(".caret")?.remove();
        status.replaceWith(notice(`Generation failed: ${data.error?.message || "error"}`, "error"));
      }
    }
  };
  return [prompt];
}

const BUILDERS = { classify: classifyTab, answer: answerTab, summarize: summarizeTab, generate: generateTab };

export function mount(main, { params, query }) {
  const life = lifetime();
  const tab = TABS[params[0]] ? params[0] : "classify";
  const task = TABS[tab].task;
  const tabs = h("nav", { class: "tabs", "aria-label": "Playground tasks" }, Object.entries(TABS).map(([key, t]) =>
    h("a", { href: `#/playground/${key}`, class: "tab", "aria-current": key === tab ? "page" : null }, t.label)));
  const modelSlot = h("div", { class: "field" }, h("p", { class: "muted" }, "Loading models…"));
  const fieldsBox = h("div", { class: "grid" }, modelSlot);
  const submit = h("button", { type: "submit", class: "btn btn-primary" }, TABS[tab].label);
  const stopButton = h("button", { type: "button", class: "btn", hidden: true }, "Stop");
  const formError = h("div");
  const form = h("form", { class: "stack playground-form", id: `${tab}-form`, novalidate: true },
    fieldsBox, h("div", { class: "row-end" }, stopButton, submit), formError);
  const output = h("div", { class: "output", id: "output", "aria-live": "polite" },
    h("p", { class: "muted" }, "Nothing yet."));
  let running = null;

  main.append(pageHeader("Playground"), tabs,
    h("section", { class: "card playground", "aria-label": `${TABS[tab].label} input` }, form),
    h("section", { class: "card", "aria-labelledby": "output-title" }, h("h2", { id: "output-title" }, "Result"), output));

  const ctx = { form: fieldsBox, output, signal: life.signal, model: () => null, run: null };
  let inputs = [];

  async function build() {
    try {
      const picker = await modelPicker(task, query.get("model"), life.signal);
      picker.select.id = "model-select";
      modelSlot.replaceWith(field({ label: "Model", control: picker.select,
        hint: picker.count ? null : `No ${TASKS[task].label.toLowerCase()} model is registered yet: train one first.` }));
      ctx.model = () => picker.select.value || null;
      inputs = await BUILDERS[tab](ctx);
    } catch (err) {
      if (life.alive) fill(formError, notice(`Could not set up the playground: ${messageOf(err)}`, "error"));
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear(formError);
    for (const control of [...inputs, ...(ctx.params || []).map((p) => p.input)]) setFieldError(control, null);
    const empty = inputs.find((c) => !c.value.trim());
    if (empty) {
      setFieldError(empty, "Fill this in.");
      empty.focus();
      return;
    }
    running?.abort();
    running = new AbortController();
    life.signal.addEventListener("abort", () => running?.abort(), { once: true });
    ctx.signal = running.signal;
    submit.disabled = true;
    stopButton.hidden = tab !== "generate";
    fill(output, h("p", { class: "muted" }, "Working…"));
    try {
      await ctx.run();
    } catch (err) {
      if (!life.alive) return;
      if (err.name === "AbortError") {
        output.append(h("p", { class: "muted" }, "Stopped."));
      } else {
        // A parameter the API refused is marked where it was typed.
        const loc = err.details?.[0]?.loc?.filter((p) => p !== "body") || [];
        const param = (ctx.params || []).find((p) => p.name === loc[0]);
        if (param) setFieldError(param.input, err.details[0].msg);
        fill(output, notice(messageOf(err), "error"));
      }
    } finally {
      submit.disabled = false;
      stopButton.hidden = true;
    }
  });
  stopButton.addEventListener("click", () => running?.abort());

  build();
  return () => life.end();
}
