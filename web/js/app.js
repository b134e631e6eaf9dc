// The dashboard's shell: a hash router (`#/jobs`, `#/jobs/<id>`, `#/new`, `#/models`, `#/models/<name>`,
// `#/playground/<task>`), the navigation, and the API key prompt. Each page is a module whose `mount(main,
// params)` draws it and returns what to call when it is left (stop its polls and streams).

import { askForKey, forgetKey, storedKey } from "./api.js";
import { clear, h, notice } from "./dom.js";
import * as job from "./pages/job.js";
import * as jobs from "./pages/jobs.js";
import * as models from "./pages/models.js";
import * as newJob from "./pages/newjob.js";
import * as playground from "./pages/playground.js";

const ROUTES = [
  [/^\/?$/, jobs, "jobs"],
  [/^\/jobs\/?$/, jobs, "jobs"],
  [/^\/jobs\/([^/]+)$/, job, "jobs"],
  [/^\/new\/?$/, newJob, "new"],
  [/^\/models\/?$/, models, "models"],
  [/^\/models\/([^/]+)$/, models, "models"],
  [/^\/playground\/?$/, playground, "playground"],
  [/^\/playground\/([^/]+)$/, playground, "playground"],
];

let leave = null;

/** `#/models/sentiment?version=2` → {path: "/models/sentiment", query: URLSearchParams} */
export function currentRoute() {
  const hash = decodeURIComponent(location.hash.replace(/^#/, ""));
  const [path, search = ""] = hash.split("?");
  return { path: path || "/", query: new URLSearchParams(search) };
}

async function render() {
  const main = document.getElementById("main");
  leave?.();
  leave = null;
  const { path, query } = currentRoute();
  const route = ROUTES.find(([pattern]) => pattern.test(path));
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (route && link.dataset.nav === route[2]) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  clear(main);
  if (!route) {
    main.append(h("h1", {}, "Not found"), notice(`No page at #${path}.`, "error"));
    return;
  }
  const [pattern, page] = route;
  const params = pattern.exec(path).slice(1);
  try {
    leave = page.mount(main, { params, query }) || null;
  } catch (err) {
    main.append(notice(err.message, "error"));
    throw err;
  }
}

function keyButton() {
  const button = document.getElementById("key-button");
  button.hidden = !storedKey();
}

function boot() {
  const dialog = document.getElementById("key-dialog");
  // Escape would close the prompt with no key, and a page without one has nothing to show.
  dialog.addEventListener("cancel", (event) => {
    if (!storedKey()) event.preventDefault();
  });
  document.getElementById("key-forget").addEventListener("click", () => {
    forgetKey();
    document.getElementById("key-input").value = "";
    document.getElementById("key-input").focus();
  });
  document.getElementById("key-button").addEventListener("click", () => {
    askForKey("Enter another API key, or forget this one.").then(() => render());
  });
  document.addEventListener("ftserve:key", keyButton);
  keyButton();
  window.addEventListener("hashchange", () => {
    render();
    document.getElementById("main").focus({ preventScroll: true });
    window.scrollTo(0, 0);
  });
  render();
}

boot();
