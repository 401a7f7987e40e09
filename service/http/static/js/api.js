// The public /v1 API, as the web app uses it: bearer key from session storage, typed errors in plain words.

const KEY_ITEM = "drca.apiKey";

export function apiKey() {
  return sessionStorage.getItem(KEY_ITEM) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_ITEM, key);
  else sessionStorage.removeItem(KEY_ITEM);
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// What each stable error code means to a person; the server's own message follows it.
const PLAIN_WORDS = {
  bad_request: "The request was malformed",
  empty_file: "The file is empty",
  unauthorized: "This server needs an API key: enter it in the key field at the top",
  not_found: "Not found (it may have been deleted)",
  conflict: "That external id is already used by another video",
  payload_too_large: "The file is larger than this server accepts",
  video_too_large: "The frames of this video are larger than this server accepts",
  undecodable_video: "This file could not be read as a video",
  no_video_stream: "This file has no video in it",
  empty_video: "This video has no frames",
  video_too_long: "This video is longer than this server accepts",
  video_too_sparse: "This video is too long for so small a file (too few frames); re-encode it at 1 frame/s or more",
  invalid_input: "The request was not accepted",
  worker_unavailable: "The encoder did not answer in time; try again in a moment",
  not_ready: "The server is still starting; try again in a moment",
  internal_error: "The server failed unexpectedly (see its log)",
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }

  get plain() {
    const lead = PLAIN_WORDS[this.code];
    if (!lead) return this.message;
    return this.message && this.message !== lead ? `${lead}: ${this.message}` : lead;
  }
}

// The connection broke during an upload. A server that refuses an oversize upload (413) while it streams
// in closes the connection, and browsers often report that as a network error instead of the answer.
export class UploadInterrupted extends Error {
  constructor() {
    super("The upload was cut off: the file may be larger than this server accepts, or the server stopped");
  }
}

// Any error as one sentence for the page.
export function describe(err) {
  if (err instanceof ApiError) return err.plain;
  if (err instanceof TypeError) return "Could not reach the server (is it running?)";
  return String(err && err.message ? err.message : err);
}

const listeners = new Set();

// Called with every ApiError, so the page can react to 401 in one place.
export function onApiError(fn) {
  listeners.add(fn);
}

function toError(status, text) {
  let code = "http_error";
  let message = text || `HTTP ${status}`;
  try {
    const body = JSON.parse(text);
    if (body && body.error) ({ code, message } = body.error);
  } catch {
    // not JSON: keep the text
  }
  const err = new ApiError(status, code, message);
  listeners.forEach((fn) => fn(err));
  return err;
}

// fetch a /v1 path; `json` or `form` (FormData) as the body. Resolves to the parsed JSON (null for 204).
export async function request(method, path, { json, form } = {}) {
  const headers = authHeaders();
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  const resp = await fetch(path, { method, headers, body });
  if (!resp.ok) throw toError(resp.status, await resp.text());
  return resp.status === 204 ? null : resp.json();
}

// POST a FormData with upload progress (fetch has none): onProgress(fraction 0..1).
export function postWithProgress(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    };
    xhr.onload = () => {
      if (xhr.status < 200 || xhr.status >= 300) {
        reject(toError(xhr.status, xhr.responseText));
        return;
      }
      try {
        resolve(JSON.parse(xhr.responseText));
      } catch {
        reject(new Error(`unexpected answer from the server (HTTP ${xhr.status}, not JSON)`));
      }
    };
    xhr.onerror = () => reject(new UploadInterrupted());
    xhr.send(form);
  });
}

export const thumbnailPath = (videoId, t) => `v1/videos/${videoId}/thumbnail?t=${Math.max(0, t).toFixed(1)}`;
export const contentPath = (videoId) => `v1/videos/${videoId}/content`;

// A URL an <img> or <video> can load. Media elements cannot send an Authorization header, so with an
// API key the bytes are fetched here and handed over as a blob URL (the whole file, for videos).
export async function mediaUrl(path) {
  if (!apiKey()) return path;
  const resp = await fetch(path, { headers: authHeaders() });
  if (!resp.ok) throw toError(resp.status, await resp.text());
  return URL.createObjectURL(await resp.blob());
}

export async function waitForJob(jobId, onStatus, intervalMs = 500) {
  for (;;) {
    const job = await request("GET", `v1/jobs/${jobId}`);
    onStatus(job);
    if (job.status === "done" || job.status === "failed") return job;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
