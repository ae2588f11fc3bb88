// Knowledge base: upload files (drag and drop, or pick them) and watch the ingestion job to its
// end; the documents with their versions and chunks; delete with a confirmation.

import { api } from "./api.js";
import { action, badge, errorBox, h, sleep, table, toast, when } from "./ui.js";

async function follow(jobId, line) {
  for (;;) {
    const job = await api(`/v1/jobs/${encodeURIComponent(jobId)}`);
    const done = job.documents.filter((d) => d.state === "current" || d.chunks !== null).length;
    line.replaceChildren(`Job ${job.job_id}: `, badge(job.state),
      ` ${done}/${job.documents.length} documents, ${job.chunks} chunks`,
      ...(job.error ? [h("span", { class: "error-text" }, ` · ${job.error}`)] : []));
    if (job.state === "succeeded" || job.state === "failed") return job;
    await sleep(500);
  }
}

async function listing(box, error) {
  const docs = (await api("/v1/documents?limit=100")).data;
  box.replaceChildren(table(
    ["Document", "Source", "Version", "Status", "Chunks", "Updated", ""],
    docs.map((d) => [
      d.document_id, d.source || "–",
      `${d.current_version ?? "–"}${d.latest_version && d.latest_version !== d.current_version ? ` (latest ${d.latest_version})` : ""}`,
      badge(d.status || "–"), d.chunks ?? "–", when(d.updated_at),
      h("button", {
        type: "button", class: "danger small", "aria-label": `Delete ${d.document_id}`,
        onclick: action(error, `Delete ${d.document_id} and its chunks?`, async () => {
          await api(`/v1/documents/${encodeURIComponent(d.document_id)}`, { method: "DELETE" });
          toast(`Deleted ${d.document_id}`);
          await listing(box, error);
        }),
      }, "Delete"),
    ]), "Documents"));
}

export async function knowledge(section) {
  const error = errorBox();
  const progress = h("ul", { class: "jobs", "aria-live": "polite" });
  const docs = h("div");
  const input = h("input", { type: "file", multiple: true, id: "files", class: "visually-hidden" });
  const drop = h("div", { class: "drop", tabindex: "0", role: "button", "aria-describedby": "drop-hint" },
    h("strong", {}, "Drop files here"), h("span", { id: "drop-hint" }, " or press Enter to choose (.txt, .md, .pdf, .html, .docx)"));
  const upload = async (files) => {
    if (!files.length) return;
    error.show(null);
    const form = new FormData();
    for (const f of files) form.append("file", f, f.name);
    const line = h("li", {}, `Uploading ${files.length} file(s)…`);
    progress.prepend(line);
    try {
      const accepted = await api("/v1/documents", { method: "POST", form });
      const job = await follow(accepted.job_id, line);
      toast(job.state === "succeeded" ? "Indexed" : `Job failed: ${job.error || "see the job"}`);
      await listing(docs, error);
    } catch (err) {
      line.remove();
      error.show(err);
    }
  };
  drop.addEventListener("click", () => input.click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); upload([...e.dataTransfer.files]); });
  input.addEventListener("change", () => { upload([...input.files]); input.value = ""; });
  section.append(
    h("div", { class: "card" }, h("label", { for: "files", class: "visually-hidden" }, "Files to upload"), input, drop, error, progress),
    docs);
  await listing(docs, error);
}
