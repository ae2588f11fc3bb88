// Evaluations: the tenant's evaluations; one shows each arm's pass rate with its 95% interval as
// a chart, the paired verdicts, the recommendation and the failing items.

import { api, request } from "./api.js";
import { badge, fmt, h, table, when } from "./ui.js";

const SVG = "http://www.w3.org/2000/svg";

function s(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// Pass rates as bars with their Wilson intervals as whiskers (the same chart `ragtune eval run
// --chart` writes as a file).
export function chart(arms) {
  const row = 34;
  const left = 190;
  const width = 560;
  const plot = width - left - 60;
  const height = arms.length * row + 40;
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", class: "chart",
    "aria-label": arms.map((a) => `${a.arm}: ${fmt(a.pass_rate * 100, 0)}% passed`).join("; ") });
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {
    const x = left + t * plot;
    svg.append(s("line", { x1: x, x2: x, y1: 10, y2: height - 24, class: "grid" }),
      s("text", { x, y: height - 8, "text-anchor": "middle", class: "axis" }, `${t * 100}%`));
  }
  arms.forEach((a, i) => {
    const y = 14 + i * row;
    const [lo, hi] = a.ci95;
    svg.append(
      s("text", { x: left - 8, y: y + 14, "text-anchor": "end", class: "label" }, a.arm),
      s("rect", { x: left, y, width: Math.max(1, a.pass_rate * plot), height: 20, class: "bar" }),
      s("line", { x1: left + lo * plot, x2: left + hi * plot, y1: y + 10, y2: y + 10, class: "ci" }),
      s("line", { x1: left + lo * plot, x2: left + lo * plot, y1: y + 4, y2: y + 16, class: "ci" }),
      s("line", { x1: left + hi * plot, x2: left + hi * plot, y1: y + 4, y2: y + 16, class: "ci" }),
      s("text", { x: left + plot + 8, y: y + 14, class: "value" }, `${fmt(a.pass_rate * 100, 0)}%`));
  });
  return svg;
}

async function show(id, box) {
  const ev = await api(`/v1/evaluations/${encodeURIComponent(id)}`);
  const parts = [h("h2", {}, `Evaluation ${ev.id} `, badge(ev.state)),
    h("p", { class: "muted" }, `Eval set ${ev.eval_set} · ${ev.progress.done}/${ev.progress.total} results · finished ${when(ev.finished_at)}`)];
  if (ev.error) parts.push(h("p", { class: "error" }, ev.error));
  if (ev.arms?.length) {
    parts.push(chart(ev.arms),
      table(["Arm", "Passed", "95% interval", "Latency p50", "Retrieval hits"], ev.arms.map((a) => [
        a.arm, `${a.passed}/${a.total}`, `${fmt(a.ci95[0] * 100, 0)}–${fmt(a.ci95[1] * 100, 0)}%`,
        `${fmt(a.latency_ms.p50, 0)} ms`, a.retrieval_hit_rate === null ? "–" : `${fmt(a.retrieval_hit_rate * 100, 0)}%`]), "Arms"),
      table(["A", "B", "Difference", "p", "Verdict"], ev.comparisons.map((c) => [
        c.a, c.b, `${fmt(c.diff * 100, 0)} points`, fmt(c.p_value, 3), c.verdict.replace("_", " ")]), "Paired comparisons"));
    if (ev.recommendation) parts.push(h("p", { class: "recommendation" }, h("strong", {}, `Recommended: ${ev.recommendation.arm}. `), ev.recommendation.reason));
    const lines = (await (await request(`/v1/evaluations/${encodeURIComponent(id)}/items`)).text())
      .split("\n").filter(Boolean).map((l) => JSON.parse(l));
    const failed = lines.filter((l) => !l.passed);
    parts.push(table(["Item", "Arm", "Failed checks", "Answer"], failed.slice(0, 50).map((l) => [
      l.query || l.item, l.arm, (l.failed_checks || []).join(", "), l.output.slice(0, 200)]), `Failing items (${failed.length})`));
  }
  box.replaceChildren(h("article", { class: "card" }, parts));
}

export async function evaluations(section) {
  const list = (await api("/v1/evaluations")).data.slice().reverse();
  const box = h("div");
  section.append(
    h("p", { class: "muted" }, "Run one with ragtune eval run --set … --arms prompt,rag,adapter_rag:NAME, or POST /v1/evaluations."),
    table(["Evaluation", "Arms", "State", "Recommended", ""], list.map((e) => [
      e.id, e.arms_requested.join(", "), badge(e.state), e.recommendation?.arm || "–",
      h("button", { type: "button", class: "small", onclick: () => show(e.id, box).catch((err) => box.replaceChildren(h("p", { class: "error", role: "alert" }, err.message))) }, "Show"),
    ]), "Evaluations"),
    box);
  if (list.length) await show(list[0].id, box);
}
