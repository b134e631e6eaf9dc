// Models: the registry's names with their aliases; a model's versions with their metrics side by side, a form
// that moves an alias, and for a chosen version its model card (markdown, raw HTML off) and the training curves
// of the job that made it (read as JSON pages: a finished job needs no stream).

import { api } from "../api.js";
import { Curves } from "../chart.js";
import {
  field, fill, h, lifetime, messageOf, notice, num, pageHeader, setFieldError, table, TASKS, when,
} from "../dom.js";
import { renderMarkdown } from "../markdown.js";

// The task's main metrics first; lower is better for losses, perplexity and times.
const FIRST = ["accuracy", "f1_macro", "exact_match", "f1", "rouge1", "rouge2", "rougeL", "rougeLsum", "perplexity",
  "eval_loss", "train_loss"];
const lowerIsBetter = (key) => /loss|perplexity/.test(key);
const ranked = (key) => !/runtime|_s$/.test(key); // a run's duration is shown, not ranked

function metricOrder(keys) {
  const rank = (k) => (FIRST.includes(k) ? FIRST.indexOf(k) : FIRST.length);
  return [...keys].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
}

function aliasChips(aliases, onRemove) {
  return h("span", { class: "chips" }, Object.entries(aliases).map(([alias, version]) =>
    h("span", { class: "chip chip-alias", dataset: { alias, version: String(version) } },
      h("span", {}, `${alias} → v${version}`),
      onRemove ? h("button", { type: "button", class: "chip-x", "aria-label": `Remove alias ${alias}`,
        onclick: () => onRemove(alias) }, "×") : null)));
}

function list(main, life) {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  main.append(pageHeader("Models", h("a", { class: "btn btn-primary", href: "#/new" }, "Train a model")), body);
  api("/models?limit=100", { signal: life.signal }).then((page) => {
    if (!page.data.length) {
      fill(body, h("div", { class: "empty" }, h("p", {}, "No models yet: a job that succeeds registers one."),
        h("a", { class: "btn btn-primary", href: "#/new" }, "Start a fine-tuning job")));
      return;
    }
    fill(body, table({
      caption: "Registered models",
      className: "models-table",
      head: ["Name", "Task", "Latest", "Aliases", "Main metric", "Visibility", "Created"],
      rows: page.data.map((m) => {
        const metrics = m.latest?.metrics || {};
        const key = metricOrder(Object.keys(metrics))[0];
        return h("tr", { dataset: { model: m.name } },
          h("td", {}, h("a", { href: `#/models/${encodeURIComponent(m.name)}` }, m.name)),
          h("td", {}, TASKS[m.task]?.label || m.task),
          h("td", {}, m.latest_version ? `v${m.latest_version}` : "–"),
          h("td", {}, aliasChips(m.aliases || {})),
          h("td", {}, key ? `${key} ${num(metrics[key])}` : "–"),
          h("td", {}, m.visibility),
          h("td", {}, when(m.created_at)));
      }),
    }));
  }).catch((err) => life.alive && fill(body, notice(`Could not list models: ${messageOf(err)}`, "error")));
}

async function jobEvents(jobId, signal) {
  const events = [];
  let after = 0;
  for (;;) {
    const page = await api(`/jobs/${encodeURIComponent(jobId)}/events?after=${after}&limit=1000`, { signal });
    events.push(...page.data);
    if (!page.has_more || !page.data.length) return events;
    after = page.data[page.data.length - 1].id;
  }
}

function detail(main, life, name, query) {
  let model = null;
  let chosen = Number(query.get("version")) || null;
  const header = h("div");
  const versionsBox = h("div", { id: "versions" });
  const aliasesBox = h("div", { id: "aliases" });
  const aliasInput = h("input", { name: "alias", list: "alias-options", value: "production", autocomplete: "off",
    spellcheck: "false" });
  const aliasOptions = h("datalist", { id: "alias-options" });
  const versionSelect = h("select", { name: "version" });
  const moveButton = h("button", { type: "submit", class: "btn btn-primary" }, "Move alias");
  const aliasStatus = h("p", { class: "muted", role: "status" });
  const versionBox = h("section", { class: "card", id: "version-detail", "aria-labelledby": "version-title" });

  main.append(
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "#/models" }, "Models"), " / ", name),
    header,
    h("section", { class: "card", "aria-labelledby": "versions-title" },
      h("h2", { id: "versions-title" }, "Versions"), versionsBox),
    h("section", { class: "card", "aria-labelledby": "aliases-title" },
      h("h2", { id: "aliases-title" }, "Aliases"),
      h("p", { class: "muted" }, "A request for the bare name is served by the version the production alias points at."),
      aliasesBox,
      h("form", { class: "inline-form", id: "alias-form", onsubmit: moveAlias },
        field({ label: "Alias", control: aliasInput }), aliasOptions,
        field({ label: "Version", control: versionSelect }), moveButton),
      aliasStatus),
    versionBox);

  function draw() {
    const endpoint = TASKS[model.task]?.endpoint;
    fill(header, pageHeader(name,
      endpoint ? h("a", { class: "btn", href: `#/playground/${endpoint}?model=${encodeURIComponent(name)}` },
        "Try it in the playground") : null));
    header.firstChild.querySelector("h1").append(" ", h("span", { class: "tag" }, TASKS[model.task]?.label || model.task),
      h("span", { class: "tag" }, model.visibility));
    const versions = model.versions || [];
    const keys = metricOrder(new Set(versions.flatMap((v) => Object.keys(v.metrics || {}))));
    const best = {};
    for (const key of keys) {
      const values = versions.map((v) => v.metrics?.[key]).filter((v) => typeof v === "number");
      if (ranked(key) && new Set(values).size > 1) {
        best[key] = lowerIsBetter(key) ? Math.min(...values) : Math.max(...values);
      }
    }
    const byVersion = {};
    for (const [alias, version] of Object.entries(model.aliases || {})) (byVersion[version] ||= {})[alias] = version;
    fill(versionsBox, versions.length ? table({
      caption: `Versions of ${name} with their metrics`,
      className: "versions-table",
      head: ["Version", "Aliases", ...keys, "Base model", "Job", "Created"],
      rows: versions.map((v) => h("tr", { dataset: { version: String(v.version) }, class: v.version === chosen ? "selected" : null },
        h("td", {}, h("a", { class: "version-link", href: `#/models/${encodeURIComponent(name)}?version=${v.version}`,
          "aria-label": `Show version ${v.version}`, "aria-current": v.version === chosen ? "true" : null }, `v${v.version}`)),
        h("td", { class: "aliases-cell" }, aliasChips(byVersion[v.version] || {})),
        keys.map((k) => h("td", { class: v.metrics?.[k] === best[k] ? "num best" : "num", dataset: { metric: k } },
          num(v.metrics?.[k]))),
        h("td", { class: "truncate", title: v.base_model_resolved || v.base_model || "" }, v.base_model || "–"),
        h("td", {}, v.job_id ? h("a", { href: `#/jobs/${v.job_id}`, class: "mono" }, v.job_id) : "–"),
        h("td", {}, when(v.created_at)))),
    }) : h("p", { class: "muted" }, "No versions."));
    fill(aliasesBox, Object.keys(model.aliases || {}).length
      ? aliasChips(model.aliases, removeAlias) : h("p", { class: "muted" }, "No aliases yet."));
    fill(aliasOptions, ["production", "staging", ...Object.keys(model.aliases || {})]
      .filter((a, i, all) => all.indexOf(a) === i).map((a) => h("option", { value: a })));
    const keep = versionSelect.value;
    fill(versionSelect, versions.map((v) => h("option", { value: String(v.version) }, `v${v.version}`)));
    versionSelect.value = keep || String(chosen);
  }

  async function load() {
    model = await api(`/models/${encodeURIComponent(name)}`, { signal: life.signal });
    if (!life.alive) return;
    chosen ||= model.latest_version;
    draw();
  }

  async function moveAlias(event) {
    event.preventDefault();
    setFieldError(aliasInput, null);
    const alias = aliasInput.value.trim();
    if (!alias) {
      setFieldError(aliasInput, "Name the alias.");
      aliasInput.focus();
      return;
    }
    moveButton.disabled = true;
    try {
      const updated = await api(`/models/${encodeURIComponent(name)}/aliases/${encodeURIComponent(alias)}`,
        { method: "PUT", json: { version: Number(versionSelect.value) }, signal: life.signal });
      model = { ...model, ...updated, versions: model.versions };
      aliasStatus.textContent = `${alias} now points at v${versionSelect.value}.`;
      draw();
    } catch (err) {
      if (life.alive) setFieldError(aliasInput, messageOf(err));
    } finally {
      moveButton.disabled = false;
    }
  }

  async function removeAlias(alias) {
    try {
      const updated = await api(`/models/${encodeURIComponent(name)}/aliases/${encodeURIComponent(alias)}`,
        { method: "DELETE", signal: life.signal });
      model = { ...model, ...updated, versions: model.versions };
      aliasStatus.textContent = `Removed ${alias}.`;
      draw();
    } catch (err) {
      if (life.alive) aliasStatus.textContent = `Could not remove ${alias}: ${messageOf(err)}`;
    }
  }

  async function showVersion() {
    const version = (model.versions || []).find((v) => v.version === chosen);
    if (!version) {
      fill(versionBox, h("h2", { id: "version-title" }, "Version"), notice(`No version ${chosen}.`, "error"));
      return;
    }
    const card = h("div", { class: "model-card" }, h("p", { class: "muted" }, "Loading the model card…"));
    const curvesBox = h("div", { id: "version-curves" }, h("p", { class: "muted" }, "Loading…"));
    fill(versionBox,
      h("h2", { id: "version-title" }, `${name}:${version.version}`),
      h("h3", {}, "Training curves"), curvesBox,
      h("h3", {}, "Model card"), card);
    api(`/models/${encodeURIComponent(name)}/versions/${version.version}/card`, { signal: life.signal })
      .then((text) => fill(card, renderMarkdown(text)))
      .catch((err) => life.alive && fill(card, notice(messageOf(err), "info")));
    if (!version.job_id) {
      fill(curvesBox, h("p", { class: "muted" }, "This version was not trained here (no job)."));
      return;
    }
    try {
      const events = await jobEvents(version.job_id, life.signal);
      if (!life.alive) return;
      const curves = new Curves({ task: model.task, heading: "h4" });
      fill(curvesBox, h("p", { class: "muted" }, "From job ", h("a", { href: `#/jobs/${version.job_id}`, class: "mono" },
        version.job_id), "."), curves.el);
      for (const event of events) if (event.type === "metrics") curves.add(event.data);
      life.signal.addEventListener("abort", () => curves.destroy());
    } catch (err) {
      if (life.alive) fill(curvesBox, notice(`No curves: ${messageOf(err)}`, "info"));
    }
  }

  load().then(showVersion).catch((err) => life.alive && fill(main, h("h1", {}, name),
    notice(`Could not load model ${name}: ${messageOf(err)}`, "error")));
}

export function mount(main, { params, query }) {
  const life = lifetime();
  if (params[0]) detail(main, life, params[0], query);
  else list(main, life);
  return () => life.end();
}
