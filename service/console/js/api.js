// The one door to ragtune's public API: the key of this tab, JSON in and out, and errors in the
// API's one shape ({"error": {"message", "code", "param"}}) turned into ApiError.

const KEY = "ragtune.key";

export class ApiError extends Error {
  constructor(status, message, code, param) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set key(value) {
    if (value) sessionStorage.setItem(KEY, value); else sessionStorage.removeItem(KEY);
  },
  role: null, // "tenant" | "admin"
  me: null, // the tenant (/v1/me) when signed in with a tenant key
};

export async function errorOf(resp) {
  let err = null;
  try { err = (await resp.json()).error; } catch { /* not JSON */ }
  return new ApiError(resp.status, err?.message || `${resp.status} ${resp.statusText}`,
    err?.code || null, err?.param || null);
}

export async function request(path, { method = "GET", json, form, key } = {}) {
  const headers = { Authorization: `Bearer ${key || session.key}` };
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form) {
    body = form;
  }
  const resp = await fetch(path, { method, headers, body });
  if (!resp.ok) throw await errorOf(resp);
  return resp;
}

export async function api(path, options) {
  const resp = await request(path, options);
  return resp.status === 204 ? null : resp.json();
}

// POST /v1/chat/completions with stream: true; `onChunk` gets each parsed SSE event.
export async function streamChat(body, onChunk) {
  const resp = await request("/v1/chat/completions", { method: "POST", json: { ...body, stream: true } });
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return resp;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(502, chunk.error.message, chunk.error.code, null);
        onChunk(chunk);
      }
    }
  }
  return resp;
}
