// Live training curves: one uPlot chart per quantity (training loss, each evaluation metric) against the step.
// Points are added as events arrive and drawn once per animation frame; the chart's element carries its point
// count in data-points, which the browser tests read.

import uPlot from "../vendor/uplot/uPlot.esm.js";
import { h, num } from "./dom.js";

const COLORS = ["#4f46e5", "#0891b2", "#16a34a", "#d97706", "#db2777", "#7c3aed"];

/** How a metric key of a Trainer log is shown: `eval_f1_macro` → `f1_macro`, `eval_loss` → `validation loss`. */
export function metricName(key) {
  if (key === "loss") return "training loss";
  if (key === "eval_loss") return "validation loss";
  return key.replace(/^eval_/, "");
}

/** The evaluation metrics in one Trainer log entry (timings and the epoch are not curves). */
export function evalKeys(data) {
  return Object.keys(data).filter((k) => k.startsWith("eval_") && typeof data[k] === "number"
    && !/(_runtime|_per_second|epoch)$/.test(k));
}

export class Curve {
  constructor({ title, key, color }) {
    this.key = key;
    this.xs = [];
    this.ys = [];
    this.color = color;
    this.plotEl = h("div", { class: "chart-plot" });
    this.latest = h("span", { class: "chart-latest" }, "–");
    this.el = h("figure", { class: "chart", dataset: { metric: key, points: "0" } },
      h("figcaption", {}, h("span", { class: "chart-title" }, title), this.latest),
      this.plotEl,
      h("p", { class: "chart-empty muted" }, "No points yet."));
    this.plot = null;
    this.pending = false;
    this.resize = new ResizeObserver(() => this.fit());
    this.resize.observe(this.plotEl);
  }

  size() {
    const width = Math.max(200, Math.floor(this.plotEl.clientWidth || 320));
    return { width, height: Math.round(Math.min(240, Math.max(150, width * 0.45))) };
  }

  fit() {
    if (this.plot) this.plot.setSize(this.size());
  }

  add(x, y) {
    if (typeof x !== "number" || typeof y !== "number" || !Number.isFinite(y)) return;
    // A resumed attempt repeats steps: keep the newest value of a step.
    if (this.xs.length && x <= this.xs[this.xs.length - 1]) {
      const at = this.xs.findIndex((v) => v >= x);
      this.xs.length = at;
      this.ys.length = at;
    }
    this.xs.push(x);
    this.ys.push(y);
    this.el.dataset.points = String(this.xs.length);
    this.latest.textContent = num(y);
    this.el.classList.add("has-points");
    if (!this.pending) {
      this.pending = true;
      requestAnimationFrame(() => this.draw());
    }
  }

  draw() {
    this.pending = false;
    const data = [this.xs, this.ys];
    if (!this.plot) {
      if (!this.el.isConnected) {
        this.pending = true;
        requestAnimationFrame(() => this.draw());
        return;
      }
      this.plot = new uPlot({
        ...this.size(),
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: false } },
        axes: [
          { stroke: "#64748b", grid: { stroke: "#e2e8f0" }, ticks: { stroke: "#cbd5e1" }, label: "step",
            labelSize: 18, font: "11px system-ui, sans-serif", labelFont: "11px system-ui, sans-serif" },
          { stroke: "#64748b", grid: { stroke: "#e2e8f0" }, ticks: { stroke: "#cbd5e1" }, size: 56,
            font: "11px system-ui, sans-serif", values: (u, splits) => splits.map(num) },
        ],
        series: [{ label: "step" }, {
          label: metricName(this.key), stroke: this.color, width: 2, fill: `${this.color}14`,
          points: { show: (u) => u.data[0].length < 40, size: 5 },
        }],
      }, data, this.plotEl);
    } else {
      this.plot.setData(data);
    }
  }

  destroy() {
    this.resize.disconnect();
    this.plot?.destroy();
  }
}

/** A group of curves fed with Trainer log entries (job `metrics` events): the training loss first, then one
 * chart per evaluation metric as it first appears. */
export class Curves {
  constructor({ task, heading = "h3" } = {}) {
    this.task = task;
    this.curves = new Map();
    this.loss = h("div", { class: "charts charts-wide" });
    this.evals = h("div", { class: "charts" });
    this.evalNote = h("p", { class: "muted" }, "Evaluation metrics appear at the first evaluation.");
    this.el = h("div", { class: "curves" },
      h(heading, { class: "curves-heading" }, "Training"), this.loss,
      h(heading, { class: "curves-heading" }, "Evaluation"), this.evalNote, this.evals);
    this.curve("loss", this.loss);
  }

  curve(key, into) {
    let curve = this.curves.get(key);
    if (!curve) {
      curve = new Curve({ key, title: metricName(key), color: COLORS[this.curves.size % COLORS.length] });
      this.curves.set(key, curve);
      into.append(curve.el);
    }
    return curve;
  }

  /** One `metrics` event's data: `{step, loss, …}` or `{step, eval_loss, eval_accuracy, …}`. */
  add(data) {
    if (!data || typeof data.step !== "number") return;
    if (typeof data.loss === "number") this.curve("loss", this.loss).add(data.step, data.loss);
    const keys = evalKeys(data);
    if (keys.length) this.evalNote.hidden = true;
    for (const key of keys) this.curve(key, this.evals).add(data.step, data[key]);
    // Perplexity, the generation task's metric, is exp(validation loss).
    if (this.task === "generation" && typeof data.eval_loss === "number") {
      this.curve("perplexity", this.evals).add(data.step, Math.exp(data.eval_loss));
    }
  }

  destroy() {
    for (const curve of this.curves.values()) curve.destroy();
  }
}
