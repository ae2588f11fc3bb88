// Adapters: register an archive (with an optional gate on an eval set), each adapter's versions
// with their status, gate figures and the replicas holding them; rollback and delete.

import { api } from "./api.js";
import { action, badge, errorBox, field, fmt, h, table, toast, when } from "./ui.js";

function gateText(g) {
  if (!g) return "–";
  return `${g.passed ? "passed" : "failed"}: ${fmt(g.pass_rate * 100, 0)}% vs ${fmt(g.baseline_pass_rate * 100, 0)}% (${g.baseline}), p=${fmt(g.p_value, 3)}`;
}

async function detail(name, box, error, refresh) {
  const a = await api(`/v1/adapters/${encodeURIComponent(name)}`);
  box.append(h("article", { class: "card" },
    h("h2", {}, `${a.name} `, badge(`v${a.version}`, "ready")),
    h("p", { class: "muted" }, a.description || "No description"),
    table(["Version", "Status", "Rank", "Replicas", "Gate", "Created", ""],
      a.versions.map((v) => [
        `v${v.version}`, badge(v.status), v.rank,
        v.replicas?.length ? v.replicas.map((i) => `#${i}`).join(", ") : "–",
        gateText(v.gate), when(v.created_at),
        v.status === "retired" || (v.status === "ready" && v.version !== a.version)
          ? h("button", { type: "button", class: "small", onclick: action(error, null, async () => {
            await api(`/v1/adapters/${encodeURIComponent(name)}/rollback`, { method: "POST", json: { version: v.version } });
            toast(`${name} now serves v${v.version}`);
            await refresh();
          }) }, "Roll back to this") : "",
      ]), `Versions of ${a.name}`),
    h("button", { type: "button", class: "danger small", onclick: action(error, `Delete adapter ${name} and all its versions?`, async () => {
      await api(`/v1/adapters/${encodeURIComponent(name)}`, { method: "DELETE" });
      toast(`Deleted ${name}`);
      await refresh();
    }) }, `Delete ${name}`)));
}

export async function adapters(section) {
  const error = errorBox();
  const list = h("div");
  const refresh = async () => {
    const data = (await api("/v1/adapters")).data;
    list.replaceChildren(data.length ? "" : h("p", { class: "muted" }, "No adapter registered yet."));
    for (const a of data) await detail(a.name, list, error, refresh);
  };
  const file = h("input", { type: "file", accept: ".tar.gz,.tgz,.zip", required: true });
  const name = h("input", { type: "text", required: true, pattern: "[a-z0-9][a-z0-9_\\-]*", autocomplete: "off" });
  const description = h("input", { type: "text" });
  const examples = h("textarea", { rows: 3, placeholder: "One prompt per line" });
  const gateSet = h("input", { type: "text", placeholder: "evs_… (optional)", autocomplete: "off" });
  const minDelta = h("input", { type: "number", min: "0", max: "1", step: "0.01", value: "0" });
  const busy = h("p", { class: "muted", "aria-live": "polite" });
  const form = h("form", { class: "card" }, h("h2", {}, "Register an adapter"),
    field("PEFT LoRA archive", file, ".tar.gz or .zip of adapter_config.json + adapter_model.safetensors"),
    field("Name", name, "a new name, or an existing one for a new version"),
    field("Description", description), field("Example prompts", examples),
    h("div", { class: "row" }, field("Gate on eval set", gateSet), field("Allowed drop", minDelta)),
    h("button", { type: "submit", class: "primary" }, "Register"), busy, error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.show(null);
    const data = new FormData();
    data.append("file", file.files[0]);
    data.append("name", name.value.trim());
    data.append("description", description.value);
    data.append("examples", JSON.stringify(examples.value.split("\n").map((s) => s.trim()).filter(Boolean)));
    if (gateSet.value.trim()) data.append("gate", JSON.stringify({ eval_set: gateSet.value.trim(), min_delta: Number(minDelta.value || 0) }));
    busy.textContent = gateSet.value.trim() ? "Loading it and evaluating it against the current version…" : "Loading it on every replica…";
    try {
      const a = await api("/v1/adapters", { method: "POST", form: data });
      toast(`${a.name} v${a.version} serves`);
      form.reset();
      await refresh();
    } catch (err) {
      error.show(err);
      await refresh();
    } finally {
      busy.textContent = "";
    }
  });
  section.append(form, list);
  await refresh();
}
