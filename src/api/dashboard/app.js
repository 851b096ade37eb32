// Vulcan dashboard: plain JavaScript, no build step, no inline code (strict CSP).
//
// Everything shown comes from /v1/* and is hostile text: it is only ever put in the page
// with textContent, never as HTML. The API token (when the server wants one) is asked
// once, kept in sessionStorage and sent as an Authorization header, never in a URL;
// that is why the log stream is read with fetch and a stream reader, not EventSource.
'use strict';

const TOKEN_KEY = 'vulcan.token';
const TERMINAL = ['completed', 'failed', 'killed'];
const LIST_EVERY_MS = 1000;
const PANELS_EVERY_MS = 2000;
const DETAIL_EVERY_MS = 1000;

const SAMPLES = {
  node: `// An ES module: the default export gets the input, its value is the output.
export default async (input) => {
  for (let i = 1; i <= 3; i++) {
    console.log("tick", i);
    await new Promise((r) => setTimeout(r, 300));
  }
  return { sum: input.a + input.b };
};
`,
  python: `# The input is JSON on stdin; stdout is the output, stderr lines are logs.
import json, sys, time
d = json.load(sys.stdin)
for i in range(1, 4):
    print("tick", i, file=sys.stderr, flush=True)
    time.sleep(0.3)
print(json.dumps({"sum": d["a"] + d["b"]}))
`,
  go: `// The input is JSON on stdin; stdout is the output, stderr lines are logs.
package main

import (
	"encoding/json"
	"fmt"
	"os"
)

func main() {
	var in struct{ A, B int }
	json.NewDecoder(os.Stdin).Decode(&in)
	fmt.Fprintln(os.Stderr, "adding")
	fmt.Printf("{\\"sum\\": %d}\\n", in.A+in.B)
}
`,
  wasm: `(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 8) "42")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 8))
    (i32.store (i32.const 4) (i32.const 2))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))
`,
};

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** An element with text content (never HTML) and attributes. */
function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// ---- token ---------------------------------------------------------------------------

let tokenPrompt = null;

/** Show the token form once, however many requests were refused; resolves when a token is given. */
function askToken(rejected) {
  if (!tokenPrompt) {
    tokenPrompt = new Promise((resolve) => {
      const form = $('token-form');
      $('token-error').textContent = rejected ? 'The server refused that token.' : '';
      form.hidden = false;
      $('main').hidden = true;
      $('token-input').focus();
      form.onsubmit = (ev) => {
        ev.preventDefault();
        const value = $('token-input').value.trim();
        if (!value) {
          $('token-error').textContent = 'Enter the token.';
          return;
        }
        sessionStorage.setItem(TOKEN_KEY, value);
        $('token-input').value = '';
        form.hidden = true;
        $('main').hidden = false;
        tokenPrompt = null;
        resolve();
      };
    });
  }
  return tokenPrompt;
}

/** fetch with the token; on 401 the token is asked for and the request repeated. */
async function api(path, opts = {}) {
  for (;;) {
    const headers = new Headers(opts.headers || {});
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.set('Authorization', `Bearer ${token}`);
    let body;
    if (opts.json !== undefined) {
      headers.set('Content-Type', 'application/json');
      body = JSON.stringify(opts.json);
    }
    let res;
    try {
      res = await fetch(path, { method: opts.method || 'GET', headers, body, signal: opts.signal });
    } catch (e) {
      if (e.name !== 'AbortError') setConnected(false);
      throw e;
    }
    setConnected(true);
    if (res.status !== 401) return res;
    if (token && sessionStorage.getItem(TOKEN_KEY) === token) sessionStorage.removeItem(TOKEN_KEY);
    await askToken(Boolean(token));
  }
}

/** The JSON answer, or an HttpError carrying the server's message. */
async function apiJson(path, opts) {
  const res = await api(path, opts);
  const body = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) throw new HttpError(res.status, (body && body.error) || `HTTP ${res.status}`);
  return body;
}

function setConnected(ok) {
  $('conn').textContent = ok ? 'connected' : 'server unreachable, retrying…';
}

// ---- formatting ----------------------------------------------------------------------

function badge(status) {
  return el('span', status, { class: `badge s-${status}` });
}

function time(t) {
  return t ? new Date(t).toLocaleString() : '—';
}

function show(value) {
  if (value === null || value === undefined) return '—';
  return typeof value === 'string' ? value : JSON.stringify(value, null, 2);
}

// ---- workload list ---------------------------------------------------------------------

async function refreshList() {
  const q = new URLSearchParams({ limit: '50' });
  if ($('filter-status').value) q.set('status', $('filter-status').value);
  if ($('filter-runtime').value) q.set('runtime', $('filter-runtime').value);
  try {
    const page = await apiJson(`/v1/workloads?${q}`);
    const rows = page.workloads.map((w) => {
      const tr = el('tr', null, { 'data-id': w.id, 'data-status': w.status });
      const link = el('a', w.id, { href: `#/w/${w.id}` });
      const id = el('td');
      id.append(link);
      const status = el('td');
      status.append(badge(w.status));
      tr.append(id, status, el('td', w.runtime), el('td', w.backend), el('td', time(w.created_at)),
        el('td', w.duration_ms ?? ''));
      return tr;
    });
    $('rows').replaceChildren(...rows);
    $('total').textContent = `(${page.total})`;
    $('list-error').textContent = '';
  } catch (e) {
    $('list-error').textContent = `Could not load workloads: ${e.message}`;
  }
}

// ---- backends and stats ---------------------------------------------------------------

async function refreshPanels() {
  try {
    const backends = await apiJson('/v1/backends');
    $('backend-rows').replaceChildren(...backends.map((b) => {
      const tr = el('tr', null, { 'data-name': b.name });
      const health = el('td');
      health.append(badge(b.status));
      if (b.reason) health.title = b.reason;
      const action = el('td');
      const button = el('button', 'Restart', { type: 'button', class: 'small', 'aria-label': `Restart ${b.name}` });
      button.addEventListener('click', () => restartBackend(b.name, button));
      action.append(button);
      tr.append(el('td', b.name), health, el('td', b.running), el('td', b.queued), el('td', b.restarts), action);
      return tr;
    }));
    const stats = await apiJson('/v1/stats');
    const counts = Object.entries(stats.by_status).map(([k, v]) => `${k} ${v}`).join(' · ');
    $('stats-counts').textContent = `${stats.total} workloads: ${counts}`;
    $('stats-rows').replaceChildren(...Object.entries(stats.by_backend).map(([name, s]) => {
      const tr = el('tr');
      tr.append(el('td', name), el('td', s.count), el('td', s.p50_ms), el('td', s.p95_ms));
      return tr;
    }));
    $('backend-error').textContent = '';
  } catch (e) {
    $('backend-error').textContent = `Could not load backends: ${e.message}`;
  }
}

async function restartBackend(name, button) {
  button.disabled = true;
  try {
    await apiJson(`/v1/backends/${encodeURIComponent(name)}/restart`, { method: 'POST' });
    $('backend-error').textContent = '';
  } catch (e) {
    $('backend-error').textContent = `Restart of ${name} failed: ${e.message}`;
  }
  button.disabled = false;
  refreshPanels();
}

// ---- submit form -----------------------------------------------------------------------

let lastSample = SAMPLES.node;

function fieldError(input, errorId, message) {
  $(errorId).textContent = message || '';
  if (message) input.setAttribute('aria-invalid', 'true');
  else input.removeAttribute('aria-invalid');
  return !message;
}

function positive(id, name) {
  const raw = $(id).value.trim();
  if (raw === '') return [undefined, null];
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) return [undefined, `${name} must be a positive whole number.`];
  return [n, null];
}

async function submit(ev) {
  ev.preventDefault();
  $('submit-error').textContent = '';
  const code = $('f-code').value;
  let ok = fieldError($('f-code'), 'code-error', code.trim() ? null : 'Write some code to run.');
  let input = null;
  const rawInput = $('f-input').value.trim();
  let inputError = null;
  if (rawInput) {
    try {
      input = JSON.parse(rawInput);
    } catch (e) {
      inputError = `Input is not valid JSON: ${e.message}`;
    }
  }
  ok = fieldError($('f-input'), 'input-error', inputError) && ok;
  const resources = {};
  const limitErrors = [];
  for (const [id, key, name] of [['f-cpus', 'cpus', 'CPUs'], ['f-mem', 'mem_mb', 'Memory'], ['f-timeout', 'timeout_s', 'Timeout']]) {
    const [n, err] = positive(id, name);
    if (err) {
      limitErrors.push(err);
      $(id).setAttribute('aria-invalid', 'true');
    } else {
      $(id).removeAttribute('aria-invalid');
      if (n !== undefined) resources[key] = n;
    }
  }
  if (limitErrors.length) {
    $('submit-error').textContent = limitErrors.join(' ');
    ok = false;
  }
  if (!ok) return;
  const body = { runtime: $('f-runtime').value, isolation: $('f-isolation').value, code, input };
  if (Object.keys(resources).length) body.resources = resources;
  $('run').disabled = true;
  try {
    const w = await apiJson('/v1/workloads/async', { method: 'POST', json: body });
    location.hash = `#/w/${w.id}`;
    refreshList();
  } catch (e) {
    $('submit-error').textContent = e.message;
  } finally {
    $('run').disabled = false;
  }
}

function runtimeChanged() {
  const code = $('f-code');
  // Replace the sample, never the user's own code.
  if (!code.value.trim() || code.value === lastSample) {
    lastSample = SAMPLES[$('f-runtime').value] || '';
    code.value = lastSample;
  }
}

// ---- detail view -------------------------------------------------------------------------

let detail = null;

function closeDetail() {
  if (detail) detail.ctrl.abort();
  detail = null;
}

function openDetail(id) {
  closeDetail();
  const d = { id, ctrl: new AbortController(), last: null, ended: false, status: null };
  detail = d;
  $('d-id').textContent = id;
  for (const f of ['d-status', 'd-runtime', 'd-isolation', 'd-backend', 'd-limits', 'd-created',
    'd-started', 'd-finished', 'd-duration', 'd-exit', 'd-output', 'd-error', 'kill-error']) {
    $(f).textContent = '';
  }
  $('logs').replaceChildren();
  $('log-state').textContent = '';
  $('kill').disabled = true;
  $('home').hidden = true;
  $('detail').hidden = false;
  $('detail-title').focus();
  pollWorkload(d);
  streamLogs(d);
}

function renderWorkload(w) {
  const status = $('d-status');
  status.textContent = w.status;
  status.className = `badge s-${w.status}`;
  $('d-runtime').textContent = w.runtime;
  $('d-isolation').textContent = `${w.isolation} (asked: ${w.requested_isolation})`;
  $('d-backend').textContent = w.backend;
  $('d-limits').textContent = `${w.cpu_limit} CPU · ${w.mem_limit} MiB · ${w.timeout_s} s`;
  $('d-created').textContent = time(w.created_at);
  $('d-started').textContent = time(w.started_at);
  $('d-finished').textContent = time(w.finished_at);
  $('d-duration').textContent = w.duration_ms === null ? '—' : `${w.duration_ms} ms`;
  $('d-exit').textContent = w.exit_code ?? '—';
  $('d-output').textContent = show(w.output);
  $('d-error').textContent = show(w.error);
  $('kill').disabled = TERMINAL.includes(w.status);
}

async function pollWorkload(d) {
  while (detail === d) {
    try {
      const w = await apiJson(`/v1/workloads/${encodeURIComponent(d.id)}`, { signal: d.ctrl.signal });
      if (detail !== d) return;
      d.status = w.status;
      renderWorkload(w);
      if (TERMINAL.includes(w.status)) return;
    } catch (e) {
      if (detail !== d) return;
      $('d-error').textContent = `Could not load the workload: ${e.message}`;
      if (e instanceof HttpError && e.status === 404) return;
    }
    await sleep(DETAIL_EVERY_MS);
  }
}

function appendLog(d, seq, text) {
  if (d.last !== null && seq <= d.last) return; // already shown (a resumed stream)
  d.last = seq;
  $('logs').append(el('li', text, { 'data-seq': String(seq) }));
}

function endLog(d, status) {
  if (d.ended) return;
  d.ended = true;
  $('logs').append(el('li', `— end of log${status ? `: ${status}` : ''} —`, { class: 'end' }));
  $('log-state').textContent = 'ended';
  pollWorkload(d);
}

/**
 * Read the SSE log stream: replay, live lines, `done`. A dropped connection is resumed
 * with Last-Event-ID (the last seq shown), so nothing is lost or shown twice.
 */
async function streamLogs(d) {
  const path = `/v1/workloads/${encodeURIComponent(d.id)}/logs`;
  let failures = 0;
  while (detail === d && !d.ended) {
    try {
      const headers = {};
      if (d.last !== null) headers['Last-Event-ID'] = String(d.last);
      const res = await api(path, { headers, signal: d.ctrl.signal });
      if (res.status === 204) {
        endLog(d, d.status);
        return;
      }
      if (!res.ok) {
        const body = await res.json().catch(() => null);
        throw new HttpError(res.status, (body && body.error) || `HTTP ${res.status}`);
      }
      $('log-state').textContent = 'live';
      failures = 0;
      await readEvents(res.body, (ev) => {
        if (ev.event === 'done') endLog(d, ev.data);
        else if (ev.event === 'message' && ev.id !== null) appendLog(d, Number(ev.id), ev.data);
      });
    } catch (e) {
      if (detail !== d || e.name === 'AbortError') return;
      if (e instanceof HttpError && e.status < 500) {
        $('log-state').textContent = `unavailable: ${e.message}`;
        return;
      }
    }
    if (detail !== d || d.ended) return;
    failures += 1;
    $('log-state').textContent = 'connection lost, resuming…';
    await sleep(Math.min(250 * 2 ** failures, 5000));
  }
}

/** Parse a text/event-stream body (WHATWG rules: id, event, data, comments). */
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let ev = { id: null, event: 'message', data: [] };
  let fields = false;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      let line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line.endsWith('\r')) line = line.slice(0, -1);
      if (line === '') {
        if (fields) onEvent({ id: ev.id, event: ev.event, data: ev.data.join('\n') });
        ev = { id: null, event: 'message', data: [] };
        fields = false;
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let v = colon < 0 ? '' : line.slice(colon + 1);
      if (v.startsWith(' ')) v = v.slice(1);
      fields = true;
      if (field === 'id') ev.id = v;
      else if (field === 'event') ev.event = v;
      else if (field === 'data') ev.data.push(v);
    }
  }
}

async function kill() {
  if (!detail) return;
  const d = detail;
  $('kill').disabled = true;
  try {
    const w = await apiJson(`/v1/workloads/${encodeURIComponent(d.id)}`, { method: 'DELETE' });
    $('kill-error').textContent = '';
    renderWorkload(w);
  } catch (e) {
    $('kill-error').textContent = e.message;
    $('kill').disabled = false;
  }
}

// ---- routing and loops ---------------------------------------------------------------------

function route() {
  const m = location.hash.match(/^#\/w\/([0-9A-Za-z]+)$/);
  if (m) {
    openDetail(m[1]);
  } else {
    closeDetail();
    $('detail').hidden = true;
    $('home').hidden = false;
  }
}

async function every(ms, f) {
  for (;;) {
    await f();
    await sleep(ms);
  }
}

function start() {
  $('f-code').value = SAMPLES.node;
  $('f-runtime').addEventListener('change', runtimeChanged);
  $('submit-form').addEventListener('submit', submit);
  $('kill').addEventListener('click', kill);
  $('filter-status').addEventListener('change', refreshList);
  $('filter-runtime').addEventListener('change', refreshList);
  window.addEventListener('hashchange', route);
  route();
  every(LIST_EVERY_MS, refreshList);
  every(PANELS_EVERY_MS, refreshPanels);
}

start();
