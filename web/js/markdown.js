// A small markdown renderer for model cards, with raw HTML disabled: it builds DOM nodes and sets all text as
// text, so `<script>` or `<img onerror=…>` in a card (an imported card is arbitrary markdown) shows as the
// characters it is. Covers what Hub model cards use: YAML front matter, headings, paragraphs, lists, block quotes,
// fenced code, tables, rules, and inline code, emphasis, links and images (shown as links: the page loads
// nothing from other origins).

import { h } from "./dom.js";

const SAFE_URL = /^(https?:|mailto:|#|\/(?!\/)|\.{0,2}\/|[\w.-]+(?:\/|$))/i;

function safeHref(url) {
  const trimmed = url.trim();
  return SAFE_URL.test(trimmed) && !/^\s*(javascript|data|vbscript):/i.test(trimmed) ? trimmed : null;
}

function link(text, url) {
  const href = safeHref(url);
  if (!href) return document.createTextNode(text);
  const external = /^https?:/i.test(href);
  return h("a", { href, rel: external ? "noopener noreferrer nofollow" : null, target: external ? "_blank" : null },
    ...inline(text));
}

// Inline spans, leftmost first: code, images, links, autolinks, bold, italic.
const INLINE = [
  [/`([^`]+)`/, (m) => h("code", {}, m[1])],
  [/!\[([^\]]*)\]\(([^)\s]+)(?:\s+"[^"]*")?\)/, (m) => link(`image: ${m[1] || m[2]}`, m[2])],
  [/\[([^\]]+)\]\(([^)\s]+)(?:\s+"[^"]*")?\)/, (m) => link(m[1], m[2])],
  [/<(https?:\/\/[^\s>]+)>/, (m) => link(m[1], m[1])],
  [/\*\*([^*]+)\*\*|__([^_]+)__/, (m) => h("strong", {}, ...inline(m[1] ?? m[2]))],
  [/\*([^*\s][^*]*)\*|\b_([^_\s][^_]*)_\b/, (m) => h("em", {}, ...inline(m[1] ?? m[2]))],
];

export function inline(text) {
  const out = [];
  let rest = text;
  while (rest) {
    let best = null;
    for (const [pattern, make] of INLINE) {
      const m = pattern.exec(rest);
      if (m && (best === null || m.index < best.m.index)) best = { m, make };
    }
    if (!best) {
      out.push(document.createTextNode(rest));
      break;
    }
    if (best.m.index) out.push(document.createTextNode(rest.slice(0, best.m.index)));
    out.push(best.make(best.m));
    rest = rest.slice(best.m.index + best.m[0].length);
  }
  return out;
}

const cells = (line) => line.trim().replace(/^\|/, "").replace(/\|$/, "").split(/(?<!\\)\|/)
  .map((c) => c.trim().replace(/\\\|/g, "|"));
const isRule = (line) => /^ {0,3}([-*_])( *\1){2,} *$/.test(line);
const isTableDivider = (line) => /^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$/.test(line);
const listItem = (line) => /^(\s*)([-*+]|\d+[.)])\s+(.*)$/.exec(line);

/** Markdown text → a <div class="markdown"> of DOM nodes. */
export function renderMarkdown(text) {
  const root = h("div", { class: "markdown" });
  const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  // YAML front matter (Hub metadata): shown as a collapsed block, not rendered.
  if (lines[0] === "---") {
    const end = lines.indexOf("---", 1);
    if (end > 0) {
      root.append(h("details", { class: "front-matter" }, h("summary", {}, "Metadata"),
        h("pre", {}, h("code", {}, lines.slice(1, end).join("\n")))));
      i = end + 1;
    }
  }
  let paragraph = [];
  const flush = () => {
    if (paragraph.length) root.append(h("p", {}, ...inline(paragraph.join(" "))));
    paragraph = [];
  };
  while (i < lines.length) {
    const line = lines[i];
    const fence = /^\s*(```|~~~)\s*([\w+-]*)/.exec(line);
    if (fence) {
      flush();
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      i += 1;
      root.append(h("pre", {}, h("code", { class: fence[2] ? `language-${fence[2]}` : null }, body.join("\n"))));
      continue;
    }
    const heading = /^(#{1,6})\s+(.*?)\s*#*\s*$/.exec(line);
    if (heading) {
      flush();
      // Card headings sit under the page's own h1/h2: start at h3.
      const level = Math.min(6, heading[1].length + 2);
      root.append(h(`h${level}`, {}, ...inline(heading[2])));
      i += 1;
      continue;
    }
    if (isRule(line)) {
      flush();
      root.append(h("hr"));
      i += 1;
      continue;
    }
    if (line.includes("|") && i + 1 < lines.length && isTableDivider(lines[i + 1])) {
      flush();
      const head = cells(line);
      const rows = [];
      i += 2;
      while (i < lines.length && lines[i].includes("|") && lines[i].trim()) rows.push(cells(lines[i++]));
      root.append(h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, ...inline(c))))),
        h("tbody", {}, rows.map((r) => h("tr", {}, head.map((_, k) => h("td", {}, ...inline(r[k] ?? "")))))))));
      continue;
    }
    if (/^\s*>/.test(line)) {
      flush();
      const quoted = [];
      while (i < lines.length && /^\s*>/.test(lines[i])) quoted.push(lines[i++].replace(/^\s*> ?/, ""));
      const inner = renderMarkdown(quoted.join("\n"));
      root.append(h("blockquote", {}, ...inner.childNodes));
      continue;
    }
    const item = listItem(line);
    if (item) {
      flush();
      const ordered = /\d/.test(item[2]);
      const list = h(ordered ? "ol" : "ul");
      while (i < lines.length) {
        const next = listItem(lines[i]);
        if (next) {
          list.append(h("li", {}, ...inline(next[3])));
        } else if (/^\s{2,}\S/.test(lines[i]) && list.lastChild) {
          list.lastChild.append(" ", ...inline(lines[i].trim())); // a wrapped item's next line
        } else {
          break;
        }
        i += 1;
      }
      root.append(list);
      continue;
    }
    if (!line.trim()) {
      flush();
    } else {
      paragraph.push(line.trim());
    }
    i += 1;
  }
  flush();
  return root;
}
