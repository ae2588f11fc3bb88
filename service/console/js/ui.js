// Small DOM helpers: elements built from data with text nodes (never HTML strings), tables, an
// error box that shows the API's message, and a toast for what finished.

export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export function table(columns, rows, caption) {
  // A region that scrolls sideways on a narrow screen: focusable, so keys can scroll it.
  return h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption || "Table" },
    h("table", {},
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows.length
        ? rows.map((r) => h("tr", {}, r.map((cell) => h("td", {}, cell))))
        : h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, "Nothing yet")))));
}

export function errorBox() {
  const box = h("p", { class: "error", role: "alert", hidden: true });
  box.show = (err) => {
    box.textContent = err ? (err.code ? `${err.message} (${err.code})` : err.message) : "";
    box.hidden = !err;
  };
  return box;
}

// A button's click: asks `question` first (when given), runs `work`, and shows what the API
// refused in the page's error box.
export function action(box, question, work) {
  return async () => {
    if (question && !confirm(question)) return;
    try {
      await work();
    } catch (err) {
      box.show(err);
    }
  };
}

export function toast(message) {
  const t = document.getElementById("toast");
  t.textContent = message;
  t.classList.add("on");
  clearTimeout(t.timer);
  t.timer = setTimeout(() => t.classList.remove("on"), 4000);
}

export function badge(text, kind) {
  return h("span", { class: `badge ${kind || text}` }, text);
}

export function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), input,
    hint ? h("small", { class: "muted" }, hint) : null);
}

export function fmt(x, digits = 2) {
  return typeof x === "number" ? x.toFixed(digits) : (x ?? "–");
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
