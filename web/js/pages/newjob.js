// New job: upload a dataset or pick one, see its preview and detected columns, choose the task, base model,
// column mapping and the main hyperparameters (defaults and bounds read from the API's OpenAPI document), submit,
// and land on the job page. The API validates; its messages are shown next to the fields they name.

import { ApiError, api, schema } from "../api.js";
import {
  clear, field, fill, h, lifetime, messageOf, notice, num, pageHeader, setFieldError, table, TASKS,
} from "../dom.js";

// Shown for every task, in this order; each task's own parameters follow. The rest go in the JSON box.
const MAIN = ["epochs", "max_steps", "learning_rate", "batch_size", "max_length", "warmup_steps", "weight_decay",
  "eval_steps", "logging_steps", "seed"];
const SUGGESTED = {
  classification: ["distilbert-base-uncased", "bert-base-uncased"],
  "question-answering": ["distilbert-base-uncased", "bert-base-uncased"],
  summarization: ["t5-small", "facebook/bart-base"],
  generation: ["gpt2", "distilgpt2"],
};

/** The task a dataset's columns look made for (the user can change it). */
export function guessTask(columns, format) {
  const has = (...names) => names.every((n) => columns.includes(n));
  if (has("question", "context", "answers")) return "question-answering";
  if (has("document", "summary")) return "summarization";
  if (has("text", "label")) return "classification";
  if (format === "txt" || (columns.length === 1 && columns[0] === "text")) return "generation";
  return null;
}

const sentence = (name) => name.replaceAll("_", " ").replace(/^./, (c) => c.toUpperCase());

function typed(prop) {
  return prop.type ? prop : (prop.anyOf || []).find((p) => p.type && p.type !== "null") || prop;
}

function bounds(prop) {
  const t = typed(prop);
  const parts = [];
  if (t.minimum !== undefined) parts.push(`≥ ${num(t.minimum)}`);
  if (t.exclusiveMinimum !== undefined) parts.push(`> ${num(t.exclusiveMinimum)}`);
  if (t.maximum !== undefined && t.maximum < 1e6) parts.push(`≤ ${num(t.maximum)}`); // not the int32 guards
  return parts.join(", ");
}

function cellText(value) {
  const text = value === null || value === undefined ? "" : typeof value === "object" ? JSON.stringify(value) : String(value);
  return text.length > 300 ? `${text.slice(0, 300)}…` : text;
}

export function mount(main, { query }) {
  const life = lifetime();
  let dataset = null; // GET /datasets/{id}
  let taskTouched = false;
  const fields = new Map(); // an error location ("hyperparameters.learning_rate") → its control

  const file = h("input", { type: "file", name: "file", accept: ".csv,.jsonl,.json,.parquet,.txt" });
  const pick = h("select", { name: "dataset" }, h("option", { value: "" }, "Choose an uploaded dataset…"));
  const datasetInfo = h("div", { class: "dataset-info", id: "dataset-info", "aria-live": "polite" });
  const task = h("select", { name: "task" }, Object.entries(TASKS).map(([v, t]) => h("option", { value: v }, t.label)));
  const baseModel = h("input", { name: "base_model", list: "base-model-options", autocomplete: "off",
    spellcheck: "false", placeholder: "a Hugging Face model id, or a registered model" });
  const baseModelOptions = h("datalist", { id: "base-model-options" });
  const modelName = h("input", { name: "model_name", autocomplete: "off", spellcheck: "false",
    placeholder: "e.g. sentiment" });
  const splitRatio = h("input", { name: "split_ratio", type: "number", step: "any", inputmode: "decimal",
    placeholder: "0.1" });
  const columnsBox = h("div", { class: "grid", id: "columns" });
  const paramsBox = h("div", { class: "grid", id: "hyperparameters" });
  const extra = h("textarea", { name: "extra_hyperparameters", rows: "3", spellcheck: "false",
    placeholder: '{"lr_scheduler_type": "cosine", "gradient_accumulation_steps": 2}' });
  const banner = h("div", { id: "form-error" });
  const submit = h("button", { type: "submit", class: "btn btn-primary" }, "Start training");

  fields.set("dataset", pick);
  fields.set("task", task);
  fields.set("base_model", baseModel);
  fields.set("model_name", modelName);
  fields.set("validation", splitRatio);
  fields.set("hyperparameters", extra);

  const form = h("form", { class: "stack", id: "new-job-form", novalidate: true, onsubmit: onSubmit },
    banner,
    h("fieldset", { class: "card" }, h("legend", {}, "1. Dataset"),
      h("div", { class: "grid" },
        field({ label: "Upload a file", control: file, hint: "csv, jsonl, json, parquet or txt (a corpus for generation)" }),
        field({ label: "Or use an uploaded dataset", control: pick })),
      datasetInfo),
    h("fieldset", { class: "card" }, h("legend", {}, "2. Task and model"),
      h("div", { class: "grid" },
        field({ label: "Task", control: task }),
        field({ label: "Base model", control: baseModel, hint: "A hub id, or a registered model (name, name:3, name@alias)" }),
        field({ label: "Model name", control: modelName, hint: "Registers the result as a new version of this name (default: the job id)" }),
        field({ label: "Validation split", control: splitRatio, hint: "Share of rows held out for evaluation; default 0.1" })),
      baseModelOptions),
    h("fieldset", { class: "card" }, h("legend", {}, "3. Columns"),
      h("p", { class: "muted" }, "Which column of the file holds each of the task's fields."), columnsBox),
    h("fieldset", { class: "card" }, h("legend", {}, "4. Hyperparameters"),
      h("p", { class: "muted" }, "Leave a field empty for its default."), paramsBox,
      field({ label: "Other hyperparameters (JSON object)", control: extra, wide: true })),
    h("div", { class: "row-end" }, h("a", { class: "btn btn-ghost", href: "#/jobs" }, "Cancel"), submit));

  main.append(pageHeader("New fine-tuning job"), form);

  // --- dataset ---------------------------------------------------------------------------------------------
  async function loadDatasets(select) {
    try {
      const page = await api("/datasets?limit=100", { signal: life.signal });
      fill(pick, h("option", { value: "" }, "Choose an uploaded dataset…"), page.data.map((d) =>
        h("option", { value: d.id }, `${d.name} · ${d.num_rows} rows · ${d.id}`)));
      if (select) pick.value = select;
    } catch (err) {
      if (life.alive) setFieldError(pick, `Could not list datasets: ${messageOf(err)}`);
    }
  }

  async function showDataset(id) {
    dataset = null;
    setFieldError(pick, null);
    if (!id) {
      clear(datasetInfo);
      drawColumns();
      return;
    }
    fill(datasetInfo, h("p", { class: "muted" }, "Reading the dataset…"));
    try {
      dataset = await api(`/datasets/${encodeURIComponent(id)}`, { signal: life.signal });
    } catch (err) {
      if (!life.alive) return;
      clear(datasetInfo);
      setFieldError(pick, messageOf(err));
      return;
    }
    if (!life.alive) return;
    const types = dataset.column_types || {};
    fill(datasetInfo,
      h("p", { class: "dataset-facts" }, h("strong", {}, dataset.name), ` · ${dataset.format} · ${dataset.num_rows} rows · `,
        h("span", { class: "mono" }, dataset.id)),
      h("div", { class: "chips", id: "detected-columns", "aria-label": "Detected columns" }, dataset.columns.map((c) =>
        h("span", { class: "chip", dataset: { column: c } }, h("strong", {}, c),
          types[c]?.length ? ` ${types[c].join(" | ")}` : ""))),
      table({
        caption: "The dataset's first rows",
        className: "preview-table",
        head: dataset.columns,
        rows: (dataset.preview || []).map((r) => h("tr", {}, dataset.columns.map((c) =>
          h("td", { title: cellText(r[c]) }, cellText(r[c]))))),
      }));
    const guess = guessTask(dataset.columns, dataset.format);
    if (guess && !taskTouched) task.value = guess;
    await drawTask();
  }

  file.addEventListener("change", async () => {
    const chosen = file.files?.[0];
    setFieldError(file, null);
    if (!chosen) return;
    fill(datasetInfo, h("p", { class: "muted" }, `Uploading ${chosen.name}…`));
    const body = new FormData();
    body.append("file", chosen, chosen.name);
    try {
      const uploaded = await api("/datasets", { method: "POST", body, signal: life.signal });
      await loadDatasets(uploaded.id);
      await showDataset(uploaded.id);
    } catch (err) {
      if (!life.alive) return;
      clear(datasetInfo);
      setFieldError(file, messageOf(err));
    }
  });
  pick.addEventListener("change", () => showDataset(pick.value));

  // --- task: columns, base models, hyperparameters ---------------------------------------------------------
  let doc = null;
  function drawColumns() {
    const taskColumns = doc?.components.schemas.JobRequest["x-task-columns"]?.[task.value] || {};
    for (const key of [...fields.keys()]) if (key.startsWith("columns.")) fields.delete(key);
    clear(columnsBox);
    for (const [name, fallback] of Object.entries(taskColumns)) {
      const options = dataset ? dataset.columns : [];
      const select = h("select", { name: `columns.${name}`, disabled: !dataset },
        h("option", { value: "" }, dataset ? "Choose a column…" : "Pick a dataset first"),
        options.map((c) => h("option", { value: c }, c)));
      select.value = options.includes(fallback) ? fallback : "";
      select.dataset.fallback = fallback;
      fields.set(`columns.${name}`, select);
      columnsBox.append(field({ label: sentence(name), control: select, hint: `default column: ${fallback}` }));
    }
  }

  async function drawParams() {
    const schemas = doc.components.schemas;
    const ref = schemas.JobRequest["x-task-params"]?.[task.value];
    const props = ref ? schemas[ref.split("/").pop()].properties : {};
    const common = new Set(Object.keys(schemas.ClassificationParams?.properties || {}));
    const names = [...MAIN.filter((n) => n in props), ...Object.keys(props).filter((n) => !common.has(n))];
    // Values typed so far survive a change of task.
    const kept = {};
    for (const [key, control] of fields) if (key.startsWith("hyperparameters.")) kept[key] = control.value;
    for (const key of [...fields.keys()]) if (key.startsWith("hyperparameters.")) fields.delete(key);
    clear(paramsBox);
    for (const name of names) {
      const prop = props[name];
      const t = typed(prop);
      const input = h("input", {
        name: `hyperparameters.${name}`,
        type: t.type === "integer" || t.type === "number" ? "number" : "text",
        step: t.type === "integer" ? "1" : "any",
        inputmode: t.type === "integer" ? "numeric" : t.type === "number" ? "decimal" : null,
        placeholder: prop.default === null || prop.default === undefined ? "auto" : String(prop.default),
        dataset: { kind: t.type || "string" },
      });
      input.value = kept[`hyperparameters.${name}`] || "";
      fields.set(`hyperparameters.${name}`, input);
      const hint = [prop.default === null || prop.default === undefined ? "Default: auto" : `Default: ${num(prop.default)}`,
        bounds(prop), prop.description || ""].filter(Boolean).join(" · ");
      paramsBox.append(field({ label: sentence(name), control: input, hint }));
    }
  }

  async function drawBaseModels() {
    const chosen = task.value;
    const hub = SUGGESTED[chosen] || [];
    fill(baseModelOptions, hub.map((id) => h("option", { value: id }, "Hugging Face hub")));
    try {
      const page = await api(`/models?task=${encodeURIComponent(chosen)}`, { signal: life.signal });
      if (task.value !== chosen) return;
      fill(baseModelOptions,
        page.data.map((m) => h("option", { value: m.name }, `registered · ${m.latest?.ref || m.name}`)),
        hub.map((id) => h("option", { value: id }, "Hugging Face hub")));
    } catch {
      // suggestions only: the field takes any id
    }
  }

  async function drawTask() {
    try {
      doc ??= await schema();
    } catch (err) {
      if (life.alive) fill(banner, notice(`Could not read the API's schema: ${messageOf(err)}`, "error"));
      return;
    }
    if (!life.alive) return;
    drawColumns();
    await drawParams();
    drawBaseModels();
  }
  task.addEventListener("change", () => {
    taskTouched = true;
    drawTask();
  });

  // --- submit ----------------------------------------------------------------------------------------------
  function clearErrors() {
    clear(banner);
    for (const control of [file, ...fields.values()]) setFieldError(control, null);
  }

  function controlFor(loc) {
    const parts = loc.filter((p) => p !== "body").map(String);
    for (let n = parts.length; n > 0; n -= 1) {
      const control = fields.get(parts.slice(0, n).join("."));
      if (control) return control;
    }
    return null;
  }

  /** Where a message without details belongs, from the field it names first. */
  function controlForMessage(message) {
    const column = /^column '([^']+)'/.exec(message) || /column '([^']+)' not found/.exec(message);
    if (column) {
      for (const [key, control] of fields) {
        if (key.startsWith("columns.") && (control.value === column[1] || control.dataset.fallback === column[1])) {
          return control;
        }
      }
    }
    const named = /^(?:unknown hyperparameter '|hyperparameters\.)([\w]+)/.exec(message);
    if (named) return fields.get(`hyperparameters.${named[1]}`) || extra;
    if (/^(base_model|base model)\b/.test(message)) return baseModel;
    if (/^(model_name|model name)\b/.test(message)) return modelName;
    if (/^(unknown task|task ')/.test(message)) return task;
    if (/^dataset\b/.test(message)) return pick;
    if (/^(validation|split_ratio)\b/.test(message)) return splitRatio;
    return null;
  }

  function showError(err) {
    const placed = new Map();
    for (const detail of err instanceof ApiError ? err.details : []) {
      const control = controlFor(detail.loc || []);
      if (control) placed.set(control, [...(placed.get(control) || []), detail.msg]);
    }
    if (!placed.size && err instanceof ApiError) {
      const control = controlForMessage(err.message);
      if (control) placed.set(control, [err.message]);
    }
    for (const [control, messages] of placed) setFieldError(control, messages.join("; "));
    fill(banner, notice(`The API refused this job: ${messageOf(err)}`, "error"));
    (placed.keys().next().value || banner).scrollIntoView({ block: "center" });
    placed.keys().next().value?.focus();
  }

  function body() {
    const hyperparameters = {};
    const text = extra.value.trim();
    if (text) {
      let parsed;
      try {
        parsed = JSON.parse(text);
      } catch (err) {
        throw Object.assign(new Error(`not JSON: ${err.message}`), { control: extra });
      }
      if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) {
        throw Object.assign(new Error("give a JSON object, e.g. {\"seed\": 1}"), { control: extra });
      }
      Object.assign(hyperparameters, parsed);
    }
    for (const [key, control] of fields) {
      if (!key.startsWith("hyperparameters.") || control.value.trim() === "") continue;
      const raw = control.value.trim();
      // Numbers are sent as numbers; whatever the API thinks of them, it says next to the field.
      hyperparameters[key.slice("hyperparameters.".length)] = control.type === "number" && raw !== ""
        ? Number(raw) : raw;
    }
    const columns = {};
    for (const [key, control] of fields) {
      if (key.startsWith("columns.") && control.value) columns[key.slice("columns.".length)] = control.value;
    }
    const out = { task: task.value, base_model: baseModel.value.trim(), columns, hyperparameters };
    if (dataset) out.dataset = { id: dataset.id };
    if (modelName.value.trim()) out.model_name = modelName.value.trim();
    if (splitRatio.value.trim()) out.validation = { split_ratio: Number(splitRatio.value) };
    return out;
  }

  async function onSubmit(event) {
    event.preventDefault();
    clearErrors();
    // The API validates (a missing dataset or base model, a bad name or value); only JSON it cannot be sent.
    let request;
    try {
      request = body();
    } catch (err) {
      setFieldError(err.control, err.message);
      err.control.focus();
      return;
    }
    submit.disabled = true;
    submit.textContent = "Submitting…";
    try {
      const job = await api("/jobs", { method: "POST", json: request, signal: life.signal });
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      if (life.alive) showError(err);
    } finally {
      submit.disabled = false;
      submit.textContent = "Start training";
    }
  }

  loadDatasets(query.get("dataset")).then(() => {
    if (query.get("dataset")) showDataset(query.get("dataset"));
  });
  drawTask();
  return () => life.end();
}
