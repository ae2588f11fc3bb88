// Playground: ask, watch the answer stream in, and see why it took its path: the route, its
// reason, the signals against the tenant's thresholds, the citations and the Server-Timing steps.
// "Compare" sends the same question a second time with another path or adapter, side by side.

import { api, session, streamChat } from "./api.js";
import { badge, errorBox, field, fmt, h } from "./ui.js";

const PATHS = ["auto", "prompt", "rag", "adapter_rag"];

function choice(models, label) {
  const path = h("select", {}, PATHS.map((p) => h("option", { value: p }, p === "auto" ? "auto (the policy decides)" : p)));
  const model = h("select", {}, h("option", { value: "" }, "any adapter (best match)"),
    models.map((m) => h("option", { value: m.id }, `${m.id}${m.version ? ` (v${m.version})` : ""}`)));
  return { path, model, node: h("fieldset", { class: "choice" }, h("legend", {}, label),
    field("Path", path), field("Adapter", model)) };
}

function signalsTable(signals, policy) {
  const thresholds = {
    top_score: signals.floor ?? policy.min_score,
    adapter_match: policy.adapter_match_min,
  };
  const rows = Object.entries(signals || {}).map(([k, v]) => {
    const limit = thresholds[k];
    const vs = typeof v === "number" && typeof limit === "number"
      ? (v >= limit ? ` ≥ ${fmt(limit)}` : ` < ${fmt(limit)}`) : "";
    const shown = typeof v === "number" ? (Number.isInteger(v) ? String(v) : fmt(v, 3)) : String(v);
    return h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, `${shown}${vs}`));
  });
  return h("table", { class: "kv" }, h("caption", {}, "Signals"), h("tbody", {}, rows));
}

function timingList(header) {
  if (!header) return null;
  const items = header.split(",").map((s) => s.trim()).filter(Boolean).map((part) => {
    const [name, ...params] = part.split(";");
    const dur = params.find((p) => p.trim().startsWith("dur="));
    return h("li", {}, `${name}: ${dur ? `${Number(dur.split("=")[1]).toFixed(1)} ms` : "–"}`);
  });
  return h("div", {}, h("h3", {}, "Server-Timing"), h("ul", { class: "timing" }, items));
}

function answerCard(title) {
  const text = h("div", { class: "answer", "aria-live": "polite" });
  const meta = h("div", { class: "meta" });
  const error = errorBox();
  const card = h("article", { class: "card result", "aria-label": title }, h("h2", {}, title), error, text, meta);
  return { card, text, meta, error };
}

function renderRoute(meta, route, citations, policy) {
  meta.replaceChildren(
    h("p", { class: "route" }, "Path ", badge(route.path), route.adapter ? h("span", { class: "muted" }, ` with ${route.adapter}`) : null),
    h("p", { class: "reason" }, route.reason),
    signalsTable(route.signals, policy),
    h("div", { class: "citations" }, h("h3", {}, `Citations (${citations.length})`),
      citations.length ? h("ol", {}, citations.map((c) => h("li", {},
        h("details", {}, h("summary", {}, `${c.document_id} v${c.version} · ${c.source || "?"} · score ${fmt(c.score, 3)}`),
          h("blockquote", {}, c.text))))) : h("p", { class: "muted" }, "No passage was given to the model.")),
  );
}

async function ask(question, pick, slot, policy) {
  const body = { messages: [{ role: "user", content: question }], temperature: 0, max_tokens: 200 };
  if (pick.model.value) body.model = pick.model.value;
  if (pick.path.value !== "auto") body.route = pick.path.value;
  slot.text.textContent = "";
  slot.error.show(null);
  slot.card.setAttribute("aria-busy", "true");
  try {
    const resp = await streamChat(body, (chunk) => {
      if (chunk.route) renderRoute(slot.meta, chunk.route, chunk.citations || [], policy);
      const delta = chunk.choices?.[0]?.delta?.content;
      if (delta) slot.text.append(delta);
    });
    const timing = timingList(resp.headers.get("server-timing"));
    if (timing) slot.meta.append(timing);
  } catch (err) {
    slot.error.show(err);
  } finally {
    slot.card.removeAttribute("aria-busy");
  }
}

export async function playground(section) {
  const models = (await api("/v1/models")).data.filter((m) => m.parent);
  const policy = session.me.policy;
  const question = h("textarea", { rows: 3, required: true, placeholder: "Ask something…" });
  const first = choice(models, "Answer");
  const second = choice(models, "Compare with");
  const compare = h("input", { type: "checkbox" });
  second.node.hidden = true;
  compare.addEventListener("change", () => { second.node.hidden = !compare.checked; });
  const results = h("div", { class: "results" });
  const form = h("form", { class: "card" },
    field("Question", question),
    h("div", { class: "choices" }, first.node, second.node),
    h("label", { class: "inline" }, compare, " Compare side by side"),
    h("button", { type: "submit", class: "primary" }, "Ask"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const slots = [answerCard(compare.checked ? "Answer A" : "Answer")];
    if (compare.checked) slots.push(answerCard("Answer B"));
    results.replaceChildren(...slots.map((s) => s.card));
    results.classList.toggle("two", compare.checked);
    await Promise.all(slots.map((slot, i) => ask(question.value, i ? second : first, slot, policy)));
  });
  section.append(
    h("p", { class: "muted" }, `Policy mode ${policy.mode}; answers are greedy (temperature 0).`),
    form, results);
}
