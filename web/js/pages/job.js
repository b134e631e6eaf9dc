// One job: its state (polled while it runs, for progress and ETA), the training loss and every evaluation metric
// as live curves fed by the job's event stream (reconnecting with Last-Event-ID), the event log, the error, and
// a cancel button.

import { TERMINAL, api, followJob } from "../api.js";
import { Curves } from "../chart.js";
import {
  duration, fill, h, lifetime, messageOf, notice, num, progressBar, statusBadge, TASKS, when,
} from "../dom.js";

const POLL_MS = 1500;
const MAX_LOG_ROWS = 400;

function describe(event) {
  if (event.message) return event.message;
  const data = event.data || {};
  if (event.type === "status" && data.status) return `status: ${data.status}`;
  return Object.entries(data)
    .filter(([k, v]) => typeof v === "number" && !/(_runtime|_per_second|flos)$/.test(k))
    .map(([k, v]) => `${k} ${num(v)}`).join(" · ");
}

function dl(pairs) {
  return h("dl", { class: "facts" }, pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v))));
}

export function mount(main, { params }) {
  const jobId = params[0];
  const life = lifetime();
  let job = null;
  let curves = null;
  let pollTimer = null;
  const schedule = (ms) => {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(() => life.alive && load(), ms);
  };

  const title = h("h1", { class: "job-title" }, jobId);
  const badge = h("span", { id: "job-status" });
  const cancel = h("button", { type: "button", class: "btn btn-danger", hidden: true, onclick: doCancel },
    "Cancel job");
  const summary = h("div", { class: "job-summary" });
  const errorBox = h("div", { id: "job-error" });
  const streamState = h("span", { class: "stream-state muted", role: "status" }, "connecting…");
  const chartsBox = h("div", { id: "job-curves" });
  const logBody = h("tbody");
  const logBox = h("div", { class: "table-wrap log" }, h("table", { class: "log-table" },
    h("caption", { class: "sr-only" }, "Event log, oldest first"),
    h("thead", {}, h("tr", {}, ["#", "Time", "Type", "Event"].map((c) => h("th", { scope: "col" }, c)))),
    logBody));
  const logCount = h("span", { class: "muted" });
  const details = h("div", { class: "job-details" });
  const finalMetrics = h("div");

  main.append(
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "#/jobs" }, "Jobs"), " / ", jobId),
    h("div", { class: "page-header" }, h("div", { class: "title-line" }, title, badge), h("div", { class: "actions" }, cancel)),
    errorBox,
    summary,
    finalMetrics,
    h("section", { class: "card", "aria-labelledby": "curves-title" },
      h("div", { class: "card-head" }, h("h2", { id: "curves-title" }, "Training curves"), streamState),
      chartsBox),
    h("section", { class: "card", "aria-labelledby": "log-title" },
      h("div", { class: "card-head" }, h("h2", { id: "log-title" }, "Event log"), logCount), logBox),
    details);

  function draw() {
    fill(badge, statusBadge(job.status));
    cancel.hidden = TERMINAL.has(job.status) || job.status === "cancelling";
    const p = job.progress || {};
    const links = [];
    if (job.model) {
      links.push(h("a", { class: "btn", href: `#/models/${encodeURIComponent(job.model.name)}?version=${job.model.version}` },
        `Model ${job.model.ref}`));
      const endpoint = TASKS[job.task]?.endpoint;
      if (endpoint) {
        links.push(h("a", { class: "btn btn-primary", href: `#/playground/${endpoint}?model=${encodeURIComponent(job.model.ref)}` },
          "Try it in the playground"));
      }
    }
    fill(summary, h("div", { class: "card summary-grid" },
      h("div", { class: "summary-progress" },
        progressBar(p, { label: "Training progress" }),
        h("p", { class: "muted" },
          p.epoch !== undefined && p.epoch !== null ? `epoch ${num(p.epoch)}` : "",
          job.status === "running" && p.eta_seconds !== null && p.eta_seconds !== undefined
            ? ` · about ${duration(p.eta_seconds)} left` : "",
          job.status === "queued" && job.queue_position !== null ? `#${job.queue_position + 1} in the queue` : "")),
      dl([
        ["Task", TASKS[job.task]?.label || job.task],
        ["Base model", job.base_model],
        ["Resolved", job.base_model_resolved],
        ["Model name", job.model_name],
        ["Created", when(job.created_at)],
        ["Started", job.started_at ? when(job.started_at) : null],
        ["Finished", job.finished_at ? when(job.finished_at) : null],
        ["Attempt", job.attempt > 1 ? String(job.attempt) : null],
      ]),
      links.length ? h("div", { class: "actions" }, links) : null));
    fill(errorBox, job.error ? h("div", { class: "notice notice-error", role: "alert" },
      h("strong", {}, job.error.type === "user" ? "The job failed (fix the request): " : "The job failed: "),
      job.error.message || "no message") : "");
    fill(finalMetrics, job.metrics && Object.keys(job.metrics).length ? h("section", { class: "card" },
      h("h2", {}, "Final metrics"),
      h("div", { class: "metric-cards" }, Object.entries(job.metrics).map(([k, v]) =>
        h("div", { class: "metric", dataset: { metric: k } }, h("span", { class: "metric-name" }, k),
          h("span", { class: "metric-value" }, num(v)))))) : null);
    const settings = h("section", { class: "card" }, h("h2", {}, "Request"),
      h("div", { class: "two-col" },
        h("div", {}, h("h3", {}, "Hyperparameters"), dl(Object.entries(job.hyperparameters || {})
          .filter(([, v]) => v !== null).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : String(v)]))),
        h("div", {}, h("h3", {}, "Data"), dl([
          ["Dataset", job.dataset?.id || job.dataset?.hub || null],
          ["Validation", job.validation ? JSON.stringify(job.validation) : null],
          ["Columns", job.columns ? Object.entries(job.columns).map(([f, c]) => `${f} ← ${c}`).join(", ") : null],
          ["Rows", job.data_stats ? `${job.data_stats.train_rows} train · ${job.data_stats.validation_rows} validation`
            : null],
        ]))));
    fill(details, settings);
  }

  async function load() {
    try {
      job = await api(`/jobs/${encodeURIComponent(jobId)}`, { signal: life.signal });
    } catch (err) {
      if (!life.alive) return;
      if (!job) {
        fill(main, h("h1", {}, "Job"), notice(`Could not load ${jobId}: ${messageOf(err)}`, "error"));
        life.end();
        return;
      }
    }
    if (!life.alive) return;
    draw();
    if (!curves) {
      curves = new Curves({ task: job.task });
      chartsBox.append(curves.el);
      follow();
    }
    if (!TERMINAL.has(job.status)) schedule(POLL_MS);
  }

  let logged = 0;
  function log(event) {
    logged += 1;
    logBody.append(h("tr", { dataset: { type: event.type } },
      h("td", { class: "mono" }, String(event.id)),
      h("td", {}, h("time", { datetime: event.created_at }, new Date(event.created_at).toLocaleTimeString())),
      h("td", {}, h("span", { class: `tag tag-${event.type}` }, event.type)),
      h("td", { class: "event-text" }, describe(event))));
    while (logBody.rows.length > MAX_LOG_ROWS) logBody.deleteRow(0);
    logCount.textContent = logged > MAX_LOG_ROWS ? `${logged} events (last ${MAX_LOG_ROWS} shown)` : `${logged} events`;
    const near = logBox.scrollHeight - logBox.scrollTop - logBox.clientHeight < 60;
    if (near) logBox.scrollTop = logBox.scrollHeight;
  }

  function follow() {
    followJob(jobId, {
      signal: life.signal,
      onEvent(event) {
        log(event);
        if (event.type === "metrics") curves.add(event.data);
        // A status change is drawn at once; progress comes with the next poll.
        if (event.type === "status" && event.data?.status && job && event.data.status !== job.status) {
          schedule(0);
        }
      },
      onState(state, err) {
        streamState.dataset.state = state;
        streamState.textContent = state === "live" ? "live" : state === "reconnecting"
          ? `reconnecting${err ? ` (${messageOf(err)})` : ""}…` : err ? `stream ended: ${messageOf(err)}` : "complete";
        if (state === "ended") schedule(0);
      },
    });
  }

  async function doCancel() {
    cancel.disabled = true;
    try {
      job = await api(`/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST", signal: life.signal });
      draw();
    } catch (err) {
      fill(errorBox, notice(`Could not cancel: ${messageOf(err)}`, "error"));
    } finally {
      cancel.disabled = false;
    }
  }

  load();
  return () => {
    life.end();
    clearTimeout(pollTimer);
    curves?.destroy();
  };
}
