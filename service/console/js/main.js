// The console's shell: sign in with a key (kept in sessionStorage, for this tab only), the pages
// that key can use, and a hash router (#/playground ...). Every page calls the public API.

import { api, ApiError, session } from "./api.js";
import { h } from "./ui.js";
import { playground } from "./playground.js";
import { knowledge } from "./knowledge.js";
import { adapters } from "./adapters.js";
import { policy } from "./policy.js";
import { evaluations } from "./evaluations.js";
import { operators } from "./operators.js";

const PAGES = {
  tenant: [
    ["playground", "Playground", playground],
    ["knowledge", "Knowledge base", knowledge],
    ["adapters", "Adapters", adapters],
    ["evaluations", "Evaluations", evaluations],
    ["policy", "Policy", policy],
  ],
  admin: [
    ["operators", "Operators", operators],
    ["policy", "Policies", policy],
  ],
};

const view = document.getElementById("view");
const nav = document.getElementById("nav");

async function identify(key) {
  try {
    session.me = await api("/v1/me", { key });
    return "tenant";
  } catch (err) {
    // the admin key is refused here as such (403 tenant_key_required); a wrong key is a 401
    if (!(err instanceof ApiError) || err.code !== "tenant_key_required") throw err;
  }
  await api("/v1/tenants", { key });
  session.me = null;
  return "admin";
}

function signedIn(role) {
  session.role = role;
  document.getElementById("who").hidden = false;
  document.getElementById("who-label").textContent =
    role === "admin" ? "Operator (admin key)" : `Tenant ${session.me.id}`;
  nav.hidden = false;
  nav.replaceChildren(...PAGES[role].map(([id, title]) =>
    h("a", { href: `#/${id}`, "data-page": id }, title)));
  route();
}

async function route() {
  if (!session.role) return;
  const pages = PAGES[session.role];
  const id = location.hash.replace(/^#\//, "") || pages[0][0];
  const page = pages.find(([pid]) => pid === id) || pages[0];
  for (const a of nav.querySelectorAll("a")) {
    if (a.dataset.page === page[0]) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = `${page[1]} · ragtune console`;
  const section = h("section", { class: "page", "aria-labelledby": "page-title" },
    h("h1", { id: "page-title" }, page[1]));
  view.replaceChildren(section);
  try {
    await page[2](section);
  } catch (err) {
    section.append(h("p", { class: "error", role: "alert" }, err.message));
  }
}

function signOut() {
  session.key = null;
  session.role = null;
  location.hash = "";
  location.reload();
}

async function start() {
  document.getElementById("sign-out").addEventListener("click", signOut);
  window.addEventListener("hashchange", route);
  const form = document.getElementById("sign-in");
  const error = document.getElementById("sign-in-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = form.key.value.trim();
    error.hidden = true;
    try {
      const role = await identify(key);
      session.key = key;
      form.reset();
      signedIn(role);
    } catch (err) {
      error.textContent = err.status === 401 ? "That key is not valid on this server." : err.message;
      error.hidden = false;
    }
  });
  if (session.key) {
    try {
      signedIn(await identify(session.key));
    } catch {
      session.key = null;
    }
  }
}

start();
