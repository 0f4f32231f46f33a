// The build page: header (app, ref, commit, state, duration, digest), the steps, and the live log
// read as Server-Sent Events over fetch. Lines are appended in batches once per animation frame;
// the log follows the bottom unless the reader scrolled up.
'use strict';

(() => {
  const { $ } = Kiln;
  const id = (location.pathname.match(/\/ui\/builds\/(\d+)/) || [])[1];
  const MAX_LINES_PER_FRAME = 4000;

  let build = null;          // the last build record from the API (or updated by events)
  let finalState = null;     // set once the state is final
  const steps = new Map();   // name -> {state, duration_ms, exit_code, reason}
  let pending = [];          // events not yet in the DOM
  let frameQueued = false;
  let lineCount = 0;
  let flushes = 0;           // DOM insertions so far (one per frame at most)
  let stick = true;          // follow the bottom of the log
  let follower = null;

  // ---- header ---------------------------------------------------------------------------------
  function renderHeader() {
    const b = build;
    if (!b) return;
    document.title = b.app + ' #' + b.id + ' · Kiln';
    $('b-app').textContent = b.app;
    $('b-id').textContent = b.id;
    $('b-ref').textContent = Kiln.shortRef(b.ref) || '—';
    $('b-commit').textContent = Kiln.shortCommit(b.commit);
    $('b-commit').title = b.commit;
    $('b-kind').textContent = b.kind || '—';
    const state = finalState || b.state;
    Kiln.stateBadge($('b-state'), state);
    $('b-state').dataset.final = Kiln.isFinal(state) ? '1' : '0';
    $('b-state').dataset.state = state;
    renderDuration();
    const digest = $('b-digest');
    digest.textContent = b.image_digest ? Kiln.shortDigest(b.image_digest) : '—';
    digest.title = b.image || b.image_digest || '';
    const reason = $('b-reason');
    reason.textContent = b.reason || '';
    reason.hidden = !b.reason;
    // Why GitLab refused the build's commit statuses, or why they could not be delivered.
    const gitlab = $('b-gitlab');
    gitlab.textContent = b.gitlab_status ? 'GitLab commit status ' + b.gitlab_status : '';
    gitlab.hidden = !b.gitlab_status;
  }

  function renderDuration() {
    if (!build) return;
    $('b-duration').textContent = Kiln.buildDuration(build) || (build.state === 'Queued' ? 'queued' : '—');
  }

  // ---- steps ----------------------------------------------------------------------------------
  function stepText(s) {
    switch (s.state) {
      case 'Running': return 'running';
      case 'Succeeded': return 'succeeded' + (s.duration_ms != null ? ' in ' + Kiln.duration(s.duration_ms) : '');
      case 'Skipped': return 'skipped';
      default: {
        let t = String(s.state || '').toLowerCase();
        if (s.duration_ms != null) t += ' after ' + Kiln.duration(s.duration_ms);
        if (s.exit_code != null) t += ' (exit ' + s.exit_code + ')';
        return t;
      }
    }
  }

  function renderSteps() {
    const frag = document.createDocumentFragment();
    for (const [name, s] of steps) {
      const li = document.createElement('li');
      li.className = 'step step-' + String(s.state || '').toLowerCase();
      li.dataset.step = name;
      const n = document.createElement('span');
      n.className = 'step-name';
      n.textContent = name;
      const t = document.createElement('span');
      t.className = 'step-status';
      t.textContent = stepText(s);
      if (s.reason) t.title = s.reason;
      li.append(n, t);
      frag.appendChild(li);
    }
    $('steps').replaceChildren(frag);
  }

  function stepsFromApi(list) {
    for (const s of list || []) {
      const known = steps.get(s.name) || {};
      const duration_ms = s.started_at && s.finished_at ? s.finished_at - s.started_at : known.duration_ms;
      steps.set(s.name, Object.assign({}, known, { state: s.state, exit_code: s.exit_code, duration_ms }));
    }
    renderSteps();
  }

  function stepEvent(d) {
    const m = d.meta || {};
    if (m.phase === 'started') {
      steps.set(d.step, { state: 'Running' });
    } else if (m.phase === 'finished') {
      steps.set(d.step, { state: m.state, duration_ms: m.duration_ms, exit_code: m.exit_code, reason: m.reason });
    }
    renderSteps();
    if (build && build.state === 'Queued') { build.state = 'Running'; renderHeader(); }
  }

  // ---- the log --------------------------------------------------------------------------------
  function lineElement(d) {
    const div = document.createElement('div');
    div.className = 'line';
    div.dataset.seq = d.seq;
    if (d.stream === 'step') {
      const m = d.meta || {};
      div.classList.add('step-header', m.phase === 'finished' ? 'step-end' : 'step-start');
      if (m.state) div.classList.add('step-' + String(m.state).toLowerCase());
      div.textContent = d.line;
    } else {
      if (d.stream === 'stderr') div.classList.add('stderr');
      else if (d.stream === 'system') div.classList.add('system');
      Kiln.appendAnsi(div, d.line);
    }
    return div;
  }

  function queue(d) {
    pending.push(d);
    if (!frameQueued) {
      frameQueued = true;
      requestAnimationFrame(flush);
    }
  }

  // One DOM insertion per frame, however many lines arrived.
  function flush() {
    frameQueued = false;
    flushes++;
    const log = $('log');
    const batch = pending.length > MAX_LINES_PER_FRAME ? pending.splice(0, MAX_LINES_PER_FRAME) : pending;
    if (batch === pending) pending = [];
    const frag = document.createDocumentFragment();
    for (const d of batch) frag.appendChild(lineElement(d));
    log.appendChild(frag);
    lineCount += batch.length;
    $('line-count').textContent = lineCount.toLocaleString();
    if (stick) toBottom();
    if (pending.length) {
      frameQueued = true;
      requestAnimationFrame(flush);
    }
  }

  // Following stops when the reader scrolls up and resumes when they reach the bottom again. Only
  // a scroll upwards counts: the log box growing or shrinking (the header changed) does not.
  let lastTop = 0;
  function onScroll() {
    const log = $('log');
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    if (atBottom) stick = true;
    else if (log.scrollTop < lastTop) stick = false;
    lastTop = log.scrollTop;
    $('follow').hidden = stick;
  }

  function toBottom() {
    const log = $('log');
    log.scrollTop = log.scrollHeight;
    lastTop = log.scrollTop;
  }

  function onEvent(ev) {
    let d;
    try { d = JSON.parse(ev.data); } catch (_) { return; }
    if (ev.event === 'line') {
      queue(d);
    } else if (ev.event === 'step') {
      queue(d);
      stepEvent(d);
    } else if (ev.event === 'end') {
      finalState = d.state;
      if (build) {
        build.state = d.state;
        build.reason = d.reason;
        if (d.image) build.image = d.image;
        if (d.digest) build.image_digest = d.digest;
      }
      renderHeader();
      // finished_at, the steps' final figures
      load().catch(() => {});
    } else if (ev.event === 'error') {
      Kiln.showError('The log stream reported: ' + (d.error || ev.data));
    }
  }

  function streamStatus(s) {
    document.body.dataset.stream = s;
    $('stream-status').textContent = { live: '● live', reconnecting: 'reconnecting…', ended: '', error: '' }[s] || '';
  }

  // ---- replication to the clusters' registries ------------------------------------------------
  let syncPoll = null;
  function renderSyncs(list) {
    const ul = $('syncs');
    ul.hidden = !list || list.length === 0;
    const frag = document.createDocumentFragment();
    for (const s of list || []) {
      const li = document.createElement('li');
      li.dataset.state = s.state;
      const what = s.state === 'Verified'
        ? 'verified · ' + Kiln.bytes(s.bytes_sent) + ' sent, ' + s.blobs_mounted + ' mounted, ' + s.blobs_skipped + ' already there · ' + Kiln.duration(s.duration_ms)
        : s.state === 'Failed' ? 'failed: ' + (s.reason || '') : 'copying…';
      li.textContent = s.cluster + ' — ' + what;
      li.title = s.target;
      frag.appendChild(li);
    }
    ul.replaceChildren(frag);
    // Replication runs after the build: look again while a copy is going on.
    clearTimeout(syncPoll);
    if ((list || []).some((s) => s.state === 'Running')) syncPoll = setTimeout(() => load().catch(() => {}), 2000);
  }

  async function load() {
    const body = await Kiln.apiJson('/api/v1/builds/' + id);
    build = body.build;
    if (finalState) build.state = finalState;
    else if (Kiln.isFinal(build.state)) finalState = build.state;
    renderHeader();
    stepsFromApi(body.steps);
    renderSyncs(body.syncs);
  }

  async function download() {
    const btn = $('download');
    btn.disabled = true;
    try {
      const res = await Kiln.api('/api/v1/builds/' + id + '/logs', { headers: { Accept: 'text/plain' } });
      const blob = await res.blob();
      const url = URL.createObjectURL(blob);
      const a = document.createElement('a');
      a.href = url;
      a.download = (build ? build.app + '-' : '') + 'build-' + id + '.log';
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (e) {
      Kiln.showError('Download failed: ' + e.message);
    } finally {
      btn.disabled = false;
    }
  }

  Kiln.boot(async () => {
    if (!id) throw new Error('no build id in the address');
    $('b-id').textContent = id;
    await load();
    $('build-section').hidden = false;
    const log = $('log');
    log.addEventListener('scroll', onScroll, { passive: true });
    $('follow').addEventListener('click', () => {
      stick = true;
      toBottom();
      $('follow').hidden = true;
    });
    new ResizeObserver(() => { if (stick) toBottom(); }).observe(log);
    $('download').addEventListener('click', download);
    const ticker = setInterval(() => {
      if (finalState) { clearInterval(ticker); return; }
      renderDuration();
    }, 1000);
    // While the build runs, re-read it now and then (Queued → Running, started_at).
    const poll = setInterval(() => {
      if (finalState) { clearInterval(poll); return; }
      if (!document.hidden) load().catch(() => {});
    }, 5000);
    follower = Kiln.followSse('/api/v1/builds/' + id + '/logs', onEvent, streamStatus);
    // For tests and the curious: cut the stream (it reconnects with Last-Event-ID).
    window.kilnBuildPage = {
      abortStream: () => follower.abort(),
      get lastEventId() { return follower.lastId; },
      get lineCount() { return lineCount; },
      get connections() { return follower.connections; },
      get flushes() { return flushes; },
    };
    await follower.done;
  });
})();
