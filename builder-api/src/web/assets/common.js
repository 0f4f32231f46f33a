// Kiln's web pages, shared parts: the API token, fetch with a bearer header, who the token is
// (its role decides which buttons a page shows), a Server-Sent Events reader over fetch
// (EventSource cannot send headers), ANSI colours, formatting, the builds table's rows, a
// confirmation dialog and copying to the clipboard.
// Nothing from the API is ever inserted as HTML: text goes in with textContent / text nodes.
'use strict';

const Kiln = (() => {
  const TOKEN_KEY = 'kiln.token';

  const $ = (id) => document.getElementById(id);

  // The token lives in the tab (sessionStorage): a token on disk outlives the reason it was
  // pasted, and one tab may use a viewer token while another uses an owner's. Older pages kept
  // it in localStorage: that copy is dropped.
  try { localStorage.removeItem(TOKEN_KEY); } catch (_) { /* storage disabled */ }

  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch (_) { return ''; }
  }

  function setToken(t) {
    if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
  }

  function showError(msg) {
    const e = $('error');
    if (!e) return;
    e.textContent = msg || '';
    e.hidden = !msg;
  }

  class HttpError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  // Asks for a token (the form in the page) and resolves once one is saved.
  function askToken(why) {
    const form = $('token-form');
    const input = $('token-input');
    for (const s of document.querySelectorAll('main > section')) s.hidden = true;
    for (const d of document.querySelectorAll('dialog[open]')) d.close();
    for (const b of ['forget-token', 'whoami']) if ($(b)) $(b).hidden = true;
    showError(why || '');
    form.hidden = false;
    input.value = '';
    input.focus();
    return new Promise((resolve) => {
      form.addEventListener('submit', function onSubmit(ev) {
        ev.preventDefault();
        const t = input.value.trim();
        if (!t) return;
        setToken(t);
        form.removeEventListener('submit', onSubmit);
        form.hidden = true;
        showError('');
        resolve(t);
      });
    });
  }

  // Any 401, from whichever request of the page (a poll, a button, the log stream): the token is
  // dropped, the page stops asking the API and shows the token form with the reason; a new
  // token starts the page again.
  let refused = null;
  function tokenRefused(message) {
    if (refused) return refused;
    setToken('');
    refused = askToken('The token was refused (' + message + '). Enter another one.').then(() => location.reload());
    return refused;
  }

  // Starts `main` once there is a token.
  function boot(main) {
    const forget = $('forget-token');
    if (forget) {
      forget.addEventListener('click', () => { setToken(''); location.reload(); });
    }
    const run = async () => {
      if (!token()) await askToken('');
      if (forget) forget.hidden = false;
      try {
        showWhoami();
        await main();
      } catch (e) {
        if (e instanceof HttpError && e.status === 401) return; // tokenRefused has it
        showError(e.message || String(e));
      }
    };
    run();
  }

  // ---- who the token is -----------------------------------------------------------------------
  const ROLES = ['viewer', 'developer', 'owner', 'admin'];
  let whoami = null;

  // `{tenant, role, token}` of the token (GET /api/v1/whoami), asked once per page.
  function me() {
    if (!whoami) whoami = apiJson('/api/v1/whoami');
    return whoami;
  }

  // Whether the token's role is `role` or above. The pages show a button only to a role the API
  // lets through; the API checks every call anyway.
  async function may(role) {
    const m = await me();
    return ROLES.indexOf(m.role) >= ROLES.indexOf(role);
  }

  async function showWhoami() {
    const el = $('whoami');
    if (!el) return;
    try {
      const m = await me();
      el.textContent = (m.tenant ? m.tenant + ' · ' : '') + m.role;
      el.hidden = false;
    } catch (_) { /* the page's own requests report it */ }
  }

  async function errorOf(res) {
    let msg = res.status + ' ' + res.statusText;
    try {
      const body = await res.json();
      if (body && body.error) msg = body.error;
    } catch (_) { /* not JSON */ }
    return new HttpError(res.status, msg);
  }

  // fetch with the bearer token; throws HttpError on a non-2xx answer (a 401 also brings back
  // the token form, and after it nothing more is sent with the refused token).
  async function api(path, opts) {
    if (refused) throw new HttpError(401, 'the token was refused');
    opts = opts || {};
    const headers = new Headers(opts.headers || {});
    headers.set('Authorization', 'Bearer ' + token());
    if (!headers.has('Accept')) headers.set('Accept', 'application/json');
    const res = await fetch(path, Object.assign({}, opts, { headers, cache: 'no-store' }));
    if (!res.ok) {
      const e = await errorOf(res);
      if (e.status === 401) tokenRefused(e.message);
      throw e;
    }
    return res;
  }

  // POSTs `body` (JSON, if any) and returns the answer's JSON.
  function post(path, body) {
    const opts = { method: 'POST' };
    if (body !== undefined) {
      opts.headers = { 'Content-Type': 'application/json' };
      opts.body = JSON.stringify(body);
    }
    return apiJson(path, opts);
  }

  async function apiJson(path, opts) {
    return (await api(path, opts)).json();
  }

  // ---- Server-Sent Events -------------------------------------------------------------------
  // Text in (any chunking: an event or a line split across reads, CRLF, LF or CR line ends),
  // events out: {event, id, data} where `id` is the event's own id field (or null). Comments
  // (keep-alives) are skipped. As in the SSE spec an id sticks: `lastId` is the last one seen,
  // what a reconnect sends as Last-Event-ID.
  class SseParser {
    constructor() {
      this.buf = '';
      this.event = '';
      this.data = null;
      this.id = null;
      this.lastId = null;
      this.pendingCR = false;
    }

    feed(text) {
      const out = [];
      let s = this.buf + text;
      if (this.pendingCR && s.startsWith('\n')) s = s.slice(1); // the LF of a CRLF split across reads
      this.pendingCR = false;
      let start = 0;
      for (let i = 0; i < s.length; i++) {
        const c = s.charCodeAt(i);
        if (c !== 10 && c !== 13) continue;
        this.line(s.slice(start, i), out);
        if (c === 13) {
          if (i + 1 < s.length) {
            if (s.charCodeAt(i + 1) === 10) i++;
          } else {
            this.pendingCR = true;
          }
        }
        start = i + 1;
      }
      this.buf = s.slice(start);
      return out;
    }

    line(line, out) {
      if (line === '') {
        if (this.data !== null) {
          out.push({ event: this.event || 'message', id: this.id, data: this.data });
        }
        this.event = '';
        this.data = null;
        this.id = null;
        return;
      }
      if (line.charCodeAt(0) === 58) return; // ':' a comment
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.charCodeAt(0) === 32) value = value.slice(1);
      if (field === 'event') this.event = value;
      else if (field === 'data') this.data = this.data === null ? value : this.data + '\n' + value;
      else if (field === 'id') { if (value.indexOf('\0') < 0) { this.id = value; this.lastId = value; } }
      // `retry` and unknown fields: ignored
    }
  }

  // Follows an SSE URL with the token. Calls onEvent({event, id, data}) for each event, once:
  // a dropped connection is reopened with Last-Event-ID = the last id seen, and an event whose
  // numeric id is not past it is dropped. Ends after an `end` event (resolves), or on an HTTP
  // error the server means (401/403/404: rejects). Returns {done, abort, stop}: `abort` cuts the
  // current connection (it is reopened), `stop` ends the follow.
  function followSse(url, onEvent, onStatus) {
    let controller = null;
    let stopped = false;
    let lastId = null;
    let connections = 0;
    const status = onStatus || (() => {});
    const done = (async () => {
      let delay = 250;
      for (;;) {
        if (stopped) return;
        controller = new AbortController();
        try {
          const headers = { Accept: 'text/event-stream' };
          if (lastId !== null) headers['Last-Event-ID'] = lastId;
          const res = await api(url, { headers, signal: controller.signal });
          connections++;
          status('live');
          const reader = res.body.getReader();
          const decoder = new TextDecoder();
          const parser = new SseParser();
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            delay = 250;
            for (const ev of parser.feed(decoder.decode(value, { stream: true }))) {
              if (ev.id !== null && ev.id !== '') {
                if (lastId !== null && Number(ev.id) <= Number(lastId)) continue; // seen already
                lastId = ev.id;
              }
              onEvent(ev);
              if (ev.event === 'end') {
                stopped = true;
                try { controller.abort(); } catch (_) { /* gone */ }
                status('ended');
                return;
              }
            }
          }
        } catch (e) {
          if (e instanceof HttpError && e.status !== 502 && e.status !== 503 && e.status !== 504 && e.status !== 429) {
            status('error');
            throw e;
          }
        }
        if (stopped) return;
        status('reconnecting');
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 5000);
      }
    })();
    return {
      done,
      abort() { if (controller) controller.abort(); },
      stop() { stopped = true; if (controller) controller.abort(); },
      get lastId() { return lastId; },
      get connections() { return connections; },
    };
  }

  // ---- ANSI colours ---------------------------------------------------------------------------
  // SGR escapes (ESC [ … m) become classes: fg-30..37 / fg-90..97, bg-40..47 / bg-100..107, bold;
  // 0 resets, 22 ends bold, 39/49 the default colours. Other escape sequences are dropped.
  // Returns [[text, className], …]; the caller puts each text in as text, never as HTML.
  const ESC_RE = /\x1b\[([0-9;?]*)([A-Za-z])|\x1b[^[]?/g;

  function ansiSegments(line) {
    const out = [];
    if (line.indexOf('\x1b') < 0) { out.push([line, '']); return out; }
    let fg = '', bg = '', bold = false;
    let last = 0;
    const cls = () => [fg, bg, bold ? 'bold' : ''].filter(Boolean).join(' ');
    ESC_RE.lastIndex = 0;
    let m;
    while ((m = ESC_RE.exec(line)) !== null) {
      if (m.index > last) out.push([line.slice(last, m.index), cls()]);
      last = ESC_RE.lastIndex;
      if (m[2] !== 'm') continue;
      const codes = m[1] === '' ? [0] : m[1].split(';').map((c) => (c === '' ? 0 : Number(c)));
      for (let i = 0; i < codes.length; i++) {
        const c = codes[i];
        if (c === 0) { fg = ''; bg = ''; bold = false; }
        else if (c === 1) bold = true;
        else if (c === 22) bold = false;
        else if ((c >= 30 && c <= 37) || (c >= 90 && c <= 97)) fg = 'fg-' + c;
        else if (c === 39) fg = '';
        else if ((c >= 40 && c <= 47) || (c >= 100 && c <= 107)) bg = 'bg-' + c;
        else if (c === 49) bg = '';
        else if (c === 38 || c === 48) { // 256 colours / truecolour: skip their arguments
          if (codes[i + 1] === 5) i += 2; else if (codes[i + 1] === 2) i += 4;
        }
      }
    }
    if (last < line.length) out.push([line.slice(last), cls()]);
    return out.filter((s) => s[0] !== '');
  }

  // Appends a line's text to `el`: plain text nodes, and spans with classes for coloured runs.
  function appendAnsi(el, line) {
    for (const [text, cls] of ansiSegments(line)) {
      if (cls) {
        const span = document.createElement('span');
        span.className = cls;
        span.textContent = text;
        el.appendChild(span);
      } else {
        el.appendChild(document.createTextNode(text));
      }
    }
  }

  // ---- formatting -----------------------------------------------------------------------------
  function duration(ms) {
    if (ms === null || ms === undefined || ms < 0) return '';
    const s = Math.round(ms / 1000);
    if (s < 60) return (ms < 10000 ? (ms / 1000).toFixed(1) : s) + 's';
    const m = Math.floor(s / 60);
    if (m < 60) return m + 'm ' + (s % 60) + 's';
    return Math.floor(m / 60) + 'h ' + (m % 60) + 'm';
  }

  function bytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB'];
    let v = n || 0;
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return (i === 0 ? v : v.toFixed(1)) + ' ' + units[i];
  }

  function buildDuration(b, now) {
    if (!b.started_at) return '';
    return duration((b.finished_at || now || Date.now()) - b.started_at);
  }

  // A point in time as the reader's locale writes it, in a <time> element (machine-readable too).
  function setTime(el, ms) {
    el.textContent = ms ? new Date(ms).toLocaleString() : '—';
    if (ms) el.setAttribute('datetime', new Date(ms).toISOString()); else el.removeAttribute('datetime');
  }

  function ago(ms) {
    const s = Math.round((Date.now() - ms) / 1000);
    if (s < 60) return s + 's ago';
    if (s < 3600) return Math.floor(s / 60) + 'm ago';
    if (s < 86400) return Math.floor(s / 3600) + 'h ago';
    return new Date(ms).toLocaleString();
  }

  const shortCommit = (c) => (c || '').slice(0, 10);
  const shortDigest = (d) => (d ? d.replace(/^sha256:/, '').slice(0, 12) : '');
  const shortRef = (r) => (r || '').replace(/^refs\/(heads|tags)\//, '');
  const FINAL = new Set(['Succeeded', 'Failed', 'Cancelled', 'TimedOut']);
  const isFinal = (state) => FINAL.has(state);

  // Sets a state badge: its text and a class by state.
  function stateBadge(el, state) {
    el.textContent = state || '';
    el.className = 'state state-' + String(state || 'unknown').toLowerCase();
  }

  const firstLine = (text) => String(text || '').split('\n')[0].trim();

  // Who asked for a rollout, from the audit log's name of them (`token:7:ci`, `admin`).
  function actor(name) {
    const m = /^token:(\d+):(.*)$/.exec(name || '');
    return m ? 'token ' + m[2] + ' (#' + m[1] + ')' : name || '';
  }

  // The app page's address (with the tenant: an admin sees every tenant's apps).
  const appHref = (tenant, app) => '/ui/apps/' + encodeURIComponent(app) + '?tenant=' + encodeURIComponent(tenant);

  function link(href, text) {
    const a = document.createElement('a');
    a.href = href;
    a.textContent = text;
    return a;
  }

  function cell(tr, content, cls) {
    const td = document.createElement('td');
    if (cls) td.className = cls;
    if (content instanceof Node) td.appendChild(content); else td.textContent = content;
    tr.appendChild(td);
    return td;
  }

  // The columns of a builds table, filled into its <thead data-columns="builds"> (the builds list,
  // an app's recent builds), next to the code that fills its rows.
  const BUILD_COLUMNS = ['#', 'State', 'App', 'Ref', 'Commit', 'Queued', 'Duration', 'Image'];
  document.addEventListener('DOMContentLoaded', () => {
    for (const thead of document.querySelectorAll('thead[data-columns="builds"]')) {
      const tr = document.createElement('tr');
      for (const c of BUILD_COLUMNS) {
        const th = document.createElement('th');
        th.textContent = c;
        tr.appendChild(th);
      }
      thead.replaceChildren(tr);
    }
  });

  // One row of a builds table; the whole row opens the build (the link stays the accessible
  // target).
  function buildRow(b) {
    const tr = document.createElement('tr');
    tr.dataset.id = b.id;
    const href = '/ui/builds/' + encodeURIComponent(b.id);
    cell(tr, link(href, '#' + b.id));
    const badge = document.createElement('span');
    stateBadge(badge, b.state);
    if (b.reason) badge.title = b.reason;
    cell(tr, badge);
    cell(tr, link(appHref(b.tenant, b.app), b.app));
    cell(tr, shortRef(b.ref));
    const commit = document.createElement('code');
    commit.textContent = shortCommit(b.commit);
    commit.title = b.commit_message ? b.commit + '\n' + firstLine(b.commit_message) : b.commit;
    cell(tr, commit);
    const queued = cell(tr, ago(b.queued_at), 'muted');
    queued.title = new Date(b.queued_at).toLocaleString();
    cell(tr, buildDuration(b), 'num');
    const digest = document.createElement('code');
    digest.textContent = shortDigest(b.image_digest);
    if (b.image) digest.title = b.image;
    cell(tr, digest);
    tr.addEventListener('click', (ev) => {
      if (ev.target.closest('a') || window.getSelection().toString()) return;
      location.href = href;
    });
    return tr;
  }

  // Asks to confirm with the page's <dialog id="confirm">; resolves true for its OK button.
  function confirm(text, ok) {
    const dialog = $('confirm');
    $('confirm-text').textContent = text;
    $('confirm-ok').textContent = ok;
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
      dialog.returnValue = '';
      dialog.showModal();
      $('confirm-cancel').focus(); // the safe choice has the focus
    });
  }

  // Copies `text`: the Clipboard API where the page may use it, else a selection and the copy
  // command. Resolves whether it worked.
  async function copy(text) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (_) {
      const area = document.createElement('textarea');
      area.value = text;
      area.setAttribute('readonly', '');
      area.className = 'offscreen';
      document.body.appendChild(area);
      area.select();
      let done = false;
      try { done = document.execCommand('copy'); } catch (_) { done = false; }
      area.remove();
      return done;
    }
  }

  return {
    $, token, setToken, boot, api, apiJson, post, HttpError, showError, me, may, SseParser, followSse,
    ansiSegments, appendAnsi, duration, bytes, buildDuration, setTime, ago, shortCommit, shortDigest, shortRef,
    isFinal, stateBadge, firstLine, actor, appHref, link, cell, buildRow, confirm, copy,
  };
})();
