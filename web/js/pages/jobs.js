// Jobs: a table of the caller's jobs, newest first, refreshed by polling GET /jobs (no stream is held open here),
// with a status filter and cursor pages.

import { api } from "../api.js";
import {
  duration, fill, h, lifetime, messageOf, notice, pageHeader, progressBar, statusBadge, table, when,
} from "../dom.js";

const STATUSES = ["queued", "running", "cancelling", "succeeded", "failed", "cancelled"];
const POLL_MS = 2000;
const LIMIT = 25;

function row(job) {
  const link = h("a", { href: `#/jobs/${job.id}`, class: "mono" }, job.id);
  const model = job.model
    ? h("a", { href: `#/models/${encodeURIComponent(job.model.name)}?version=${job.model.version}` }, job.model.ref)
    : h("span", {}, job.model_name || "–");
  const active = job.status === "running" || job.status === "cancelling";
  return h("tr", { dataset: { job: job.id, status: job.status } },
    h("td", {}, link, job.kind && job.kind !== "train" ? h("span", { class: "tag" }, job.kind) : null),
    h("td", {}, statusBadge(job.status)),
    h("td", {}, job.task),
    h("td", { class: "truncate", title: job.base_model || "" }, job.base_model || "–"),
    h("td", {}, model),
    h("td", {}, job.progress ? progressBar(job.progress, { label: `Progress of ${job.id}` }) : "–"),
    h("td", {}, active ? duration(job.progress?.eta_seconds) : job.status === "queued" && job.queue_position !== null
      ? `#${job.queue_position + 1} in queue` : "–"),
    h("td", {}, when(job.created_at)));
}

export function mount(main, { query }) {
  const life = lifetime();
  const status = query.get("status") || "";
  const cursors = [null]; // the `after` of each page seen; the last is the current page's
  const filter = h("select", { id: "status-filter", onchange: () => {
    location.hash = filter.value ? `#/jobs?status=${filter.value}` : "#/jobs";
  } }, h("option", { value: "" }, "All statuses"), STATUSES.map((s) => h("option", { value: s }, s)));
  filter.value = status;
  const body = h("div", { class: "jobs-body", "aria-live": "polite" }, h("p", { class: "muted" }, "Loading…"));
  const older = h("button", { type: "button", class: "btn", disabled: true, onclick: () => {
    cursors.push(older.dataset.after);
    refresh();
  } }, "Older");
  const newer = h("button", { type: "button", class: "btn", disabled: true, onclick: () => {
    cursors.pop();
    refresh();
  } }, "Newer");

  const pager = h("div", { class: "pager", hidden: true }, newer, older);
  main.append(
    pageHeader("Jobs", h("a", { class: "btn btn-primary", href: "#/new" }, "New job")),
    h("div", { class: "toolbar" },
      h("div", { class: "inline-field" }, h("label", { for: "status-filter" }, "Status"), filter),
      pager),
    body);

  let seq = 0; // a click (filter, page) starts a new poll chain; the old one stops at its next turn
  async function refresh() {
    const mine = ++seq;
    const params = new URLSearchParams({ limit: String(LIMIT) });
    if (status) params.set("status", status);
    const after = cursors[cursors.length - 1];
    if (after) params.set("after", after);
    try {
      const page = await api(`/jobs?${params}`, { signal: life.signal });
      if (!life.alive || mine !== seq) return;
      if (!page.data.length) {
        fill(body, h("div", { class: "empty" },
          h("p", {}, status ? `No ${status} jobs.` : "No jobs yet."),
          h("a", { class: "btn btn-primary", href: "#/new" }, "Start a fine-tuning job")));
      } else {
        fill(body, table({
          caption: "Jobs, newest first",
          className: "jobs-table",
          head: ["Job", "Status", "Task", "Base model", "Model", "Progress", "ETA", "Created"],
          rows: page.data.map(row),
        }));
      }
      older.disabled = !page.has_more;
      older.dataset.after = page.data.length ? page.data[page.data.length - 1].id : "";
      newer.disabled = cursors.length <= 1;
      pager.hidden = older.disabled && newer.disabled; // one page: nothing to page through
    } catch (err) {
      if (!life.alive) return;
      fill(body, notice(`Could not list jobs: ${messageOf(err)}`, "error"));
    }
    // Polled, not streamed; a hidden tab waits until it is shown again.
    life.later(() => {
      if (mine !== seq) return;
      if (document.hidden) waitVisible().then(() => mine === seq && life.alive && refresh());
      else refresh();
    }, POLL_MS);
  }

  function waitVisible() {
    return new Promise((resolve) => {
      const shown = () => {
        if (document.hidden) return;
        document.removeEventListener("visibilitychange", shown);
        resolve();
      };
      document.addEventListener("visibilitychange", shown);
    });
  }

  refresh();
  return () => life.end();
}
