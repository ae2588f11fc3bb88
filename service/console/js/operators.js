// Operators (admin key): the service's health, each engine replica and the adapters it holds,
// every tenant's usage against its limits; create a tenant (its key shown once), rotate a key,
// delete a tenant.

import { api } from "./api.js";
import { action, badge, errorBox, field, h, table, toast } from "./ui.js";

function keyOnce(id, key) {
  return h("div", { class: "card key-once", role: "alert" },
    h("h2", {}, `API key for ${id}`),
    h("p", {}, "Shown once: the server keeps only its digest. Copy it now."),
    h("code", { class: "key", tabindex: "0" }, key));
}

export async function operators(section) {
  const error = errorBox();
  const shown = h("div");
  const body = h("div");
  const refresh = async () => {
    const st = await api("/v1/admin/status");
    body.replaceChildren(
      h("article", { class: "card" }, h("h2", {}, "Service ", badge(st.status === "ready" ? "ready" : "failed", st.status === "ready" ? "succeeded" : "failed")),
        table(["Check", "State"], Object.entries(st.checks).map(([k, v]) => [k, v]), "Health")),
      h("article", { class: "card" }, h("h2", {}, "Engine replicas"),
        table(["#", "URL", "Health", "In flight", "Adapters held"], st.replicas.map((r) => [
          `#${r.index}`, r.url, badge(r.healthy ? "healthy" : "down", r.healthy ? "succeeded" : "failed"), r.inflight,
          r.adapters.length ? r.adapters.join(", ") : "–"]), "Replicas")),
      h("article", { class: "card" }, h("h2", {}, "Tenants"),
        table(["Tenant", "Mode", "Requests this minute", "Tokens today", ""], st.tenants.map((t) => [
          t.id, t.mode,
          `${t.usage?.requests_this_minute ?? 0}${t.limits.requests_per_minute ? ` / ${t.limits.requests_per_minute}` : ""}`,
          `${t.usage?.tokens_today ?? 0}${t.limits.tokens_per_day ? ` / ${t.limits.tokens_per_day}` : ""}`,
          h("span", { class: "buttons" },
            h("button", { type: "button", class: "small", onclick: action(error, `Rotate ${t.id}'s key? Its current keys stop working.`, async () => {
              const r = await api(`/v1/tenants/${encodeURIComponent(t.id)}/keys`, { method: "POST", json: { revoke_existing: true } });
              shown.replaceChildren(keyOnce(t.id, r.api_key));
            }) }, "Rotate key"),
            h("button", { type: "button", class: "danger small", onclick: action(error, `Delete tenant ${t.id} with its documents and adapters?`, async () => {
              await api(`/v1/tenants/${encodeURIComponent(t.id)}`, { method: "DELETE" });
              toast(`Deleted ${t.id}`);
              await refresh();
            }) }, "Delete")),
        ]), "Tenants and their limits")));
  };
  const id = h("input", { type: "text", required: true, autocomplete: "off", pattern: "[a-z0-9][a-z0-9\\-]*" });
  const mode = h("select", {}, ["auto", "prompt", "rag", "adapter_rag"].map((m) => h("option", { value: m }, m)));
  const form = h("form", { class: "card" }, h("h2", {}, "Create a tenant"),
    h("div", { class: "row" }, field("Tenant id", id, "a-z, 0-9 and '-'"), field("Mode", mode)),
    h("button", { type: "submit", class: "primary" }, "Create"), error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.show(null);
    try {
      const t = await api("/v1/tenants", { method: "POST", json: { id: id.value.trim(), policy: { mode: mode.value } } });
      shown.replaceChildren(keyOnce(t.id, t.api_key));
      form.reset();
      await refresh();
    } catch (err) {
      error.show(err);
    }
  });
  section.append(form, shown, body);
  await refresh();
}
