// Policy: a tenant's decision policy. An admin edits it (errors shown at the field the API names:
// its `param`, e.g. "policy.top_k"); a tenant sees it and runs `calibrate` on a labeled file
// (accuracy now, and with the thresholds that would do best).

import { api, session } from "./api.js";
import { errorBox, fmt, h, table, toast } from "./ui.js";

const FIELDS = [
  ["mode", "select", ["auto", "prompt", "rag", "adapter_rag"]],
  ["top_k", "number", { min: 1, max: 20, step: 1 }],
  ["min_score", "number", { min: -1, max: 1, step: 0.01, empty: "background floor" }],
  ["context_max_tokens", "number", { min: 32, max: 8000, step: 1 }],
  ["adapter_match_min", "number", { min: -1, max: 1, step: 0.01 }],
  ["adapter", "text", { empty: "best match" }],
  ["adapter_context", "select", ["trained", "policy"]],
  ["on_retrieval_error", "select", ["degrade", "fail"]],
  ["requests_per_minute", "number", { min: 1, step: 1, empty: "unlimited" }],
  ["tokens_per_day", "number", { min: 1, step: 1, empty: "unlimited" }],
  ["system_prompt", "textarea", {}],
];

function policyForm(policy, editable, onSave) {
  const inputs = {};
  const errors = {};
  const rows = FIELDS.map(([name, kind, opts]) => {
    let input;
    if (kind === "select") {
      input = h("select", {}, opts.map((o) => h("option", { value: o, selected: policy[name] === o }, o)));
    } else if (kind === "textarea") {
      input = h("textarea", { rows: 3 });
      input.value = policy[name] ?? "";
    } else {
      input = h("input", { type: kind, ...(kind === "number" ? { min: opts.min, max: opts.max, step: opts.step } : {}),
        placeholder: opts.empty || "" });
      input.value = policy[name] ?? "";
    }
    input.id = `policy-${name}`;
    input.disabled = !editable;
    const err = h("small", { class: "error-text", id: `policy-${name}-error`, role: "alert", hidden: true });
    input.setAttribute("aria-describedby", err.id);
    inputs[name] = input;
    errors[name] = err;
    return h("div", { class: "field" }, h("label", { for: input.id }, name.replaceAll("_", " ")), input, err);
  });
  const general = errorBox();
  const form = h("form", { class: "card grid" }, rows,
    editable ? h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Save policy"), general) : null);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    Object.values(errors).forEach((e) => { e.hidden = true; });
    general.show(null);
    const changes = {};
    for (const [name, kind, opts] of FIELDS) {
      const raw = inputs[name].value.trim();
      if (raw === "" && (opts.empty || kind === "textarea")) changes[name] = null;
      else changes[name] = kind === "number" ? Number(raw) : raw;
    }
    try {
      await onSave(changes);
      toast("Policy saved");
    } catch (err) {
      const name = (err.param || "").replace(/^policy\./, "").split(".")[0];
      if (errors[name]) {
        errors[name].textContent = err.message;
        errors[name].hidden = false;
        inputs[name].setAttribute("aria-invalid", "true");
        inputs[name].focus();
      } else general.show(err);
    }
  });
  return form;
}

function calibrator() {
  const file = h("input", { type: "file", accept: ".jsonl,.json,.txt", id: "labeled" });
  const out = h("div", { "aria-live": "polite" });
  const error = errorBox();
  const form = h("form", { class: "card" }, h("h2", {}, "Calibrate on labeled queries"),
    h("p", { class: "muted" }, 'JSONL rows {"query": "…", "path": "prompt" | "rag" | "adapter_rag"}. Nothing changes: an operator applies the suggestion.'),
    h("label", { for: "labeled" }, "Labeled file"), file,
    h("button", { type: "submit", class: "primary" }, "Calibrate"), error, out);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.show(null);
    try {
      const text = await file.files[0].text();
      const rows = text.split("\n").filter((l) => l.trim()).map((l, i) => {
        try { return JSON.parse(l); } catch { throw new Error(`line ${i + 1} is not JSON`); }
      });
      const r = await api("/v1/policy/calibrate", { method: "POST", json: { rows } });
      out.replaceChildren(
        table(["", "Thresholds", "Accuracy"], [
          ["Now", JSON.stringify(r.current), `${fmt(r.current_accuracy * 100, 1)}%`],
          ["Suggested", JSON.stringify(r.suggested), `${fmt(r.suggested_accuracy * 100, 1)}%`],
        ], `${r.n} labeled queries`),
        r.mistakes.length ? table(["Label", "Would take", "Query"],
          r.mistakes.slice(0, 20).map((m) => [m.label, m.predicted, m.query]), "Still misrouted") : "");
    } catch (err) {
      error.show(err);
    }
  });
  return form;
}

export async function policy(section) {
  if (session.role === "tenant") {
    section.append(h("p", { class: "muted" }, "Your tenant's policy. An operator (admin key) changes it."),
      policyForm(session.me.policy, false), calibrator());
    return;
  }
  const tenants = (await api("/v1/tenants")).data;
  if (!tenants.length) {
    section.append(h("p", { class: "muted" }, "No tenants yet: create one on the Operators page."));
    return;
  }
  const select = h("select", { id: "policy-tenant" }, tenants.map((t) => h("option", { value: t.id }, t.id)));
  const holder = h("div");
  const show = async () => {
    const t = await api(`/v1/tenants/${encodeURIComponent(select.value)}`);
    holder.replaceChildren(policyForm(t.policy, true, (changes) =>
      api(`/v1/tenants/${encodeURIComponent(t.id)}`, { method: "PATCH", json: { policy: changes } })));
  };
  select.addEventListener("change", show);
  section.append(h("div", { class: "field" }, h("label", { for: "policy-tenant" }, "Tenant"), select), holder);
  await show();
}
