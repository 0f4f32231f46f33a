// The build page: the header (app, commit and its message, author and link, times, state, image
// with a copy button, cancel and retry for roles that may), what became of the image (its copies
// to the clusters' registries and its rollouts), the steps, and the live log read as
// Server-Sent Events over fetch. Each step's lines form a group the reader can fold. Lines are
// appended in batches once per animation frame; the log follows the bottom unless the reader
// scrolled up. A search box marks the matching lines and jumps between them.
'use strict';

(() => {
  const { $ } = Kiln;
  const id = (location.pathname.match(/\/ui\/builds\/(\d+)/) || [])[1];
  const MAX_LINES_PER_FRAME = 4000;

  let build = null;          // the last build record from the API (or updated by events)
  let finalState = null;     // set once the state is final
  let canAct = false;        // the token's role may cancel and retry (developer and up)
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
    $('b-app-link').href = Kiln.appHref(b.tenant, b.app);
    $('b-id').textContent = b.id;
    $('b-ref').textContent = Kiln.shortRef(b.ref) || '—';
    $('b-commit').textContent = Kiln.shortCommit(b.commit);
    $('b-commit').title = b.commit;
    // The push's link to the commit in GitLab; without one the commit is plain text. The API
    // only keeps http(s) links; the page checks again rather than trust it with an href.
    const commitLink = $('b-commit-link');
    if (b.commit_url && /^https?:\/\//.test(b.commit_url)) commitLink.href = b.commit_url;
    else commitLink.removeAttribute('href');
    const title = $('b-title');
    title.textContent = Kiln.firstLine(b.commit_message);
    title.title = b.commit_message || '';
    title.hidden = !b.commit_message;
    $('b-author').textContent = b.commit_author || '—';
    $('b-kind').textContent = b.kind || '—';
    $('b-trigger').textContent = b.trigger || '—';
    Kiln.setTime($('b-queued'), b.queued_at);
    Kiln.setTime($('b-started'), b.started_at);
    $('b-wait').textContent = b.started_at ? '(waited ' + Kiln.duration(b.started_at - b.queued_at) + ')' : '';
    Kiln.setTime($('b-finished'), b.finished_at);
    const state = finalState || b.state;
    Kiln.stateBadge($('b-state'), state);
    $('b-state').dataset.final = Kiln.isFinal(state) ? '1' : '0';
    $('b-state').dataset.state = state;
    renderDuration();
    $('b-image-row').hidden = !b.image;
    $('b-image').textContent = b.image || '';
    // The heap options Kiln put into the image (JVM sizing), as the build record has them.
    $('b-jvm-row').hidden = !b.jvm_options;
    $('b-jvm').textContent = b.jvm_options || '';
    const reason = $('b-reason');
    reason.textContent = b.reason || '';
    reason.hidden = !b.reason;
    // Why GitLab refused the build's commit statuses, or why they could not be delivered.
    const gitlab = $('b-gitlab');
    gitlab.textContent = b.gitlab_status ? 'GitLab commit status ' + b.gitlab_status : '';
    gitlab.hidden = !b.gitlab_status;
    // A running build can be cancelled, a finished one retried.
    $('cancel').hidden = !canAct || Kiln.isFinal(state);
    $('retry').hidden = !canAct || !Kiln.isFinal(state);
  }

  function renderDuration() {
    if (!build) return;
    $('b-duration').textContent = Kiln.buildDuration(build) || (build.state === 'Queued' ? 'queued' : '—');
  }

  // ---- cancel, retry, copy --------------------------------------------------------------------
  async function cancel() {
    const btn = $('cancel');
    btn.disabled = true;
    try {
      await Kiln.post('/api/v1/builds/' + id + '/cancel');
      // The log stream ends with the final state once the build's last lines are stored.
      $('stream-status').textContent = 'cancelling…';
    } catch (e) {
      Kiln.showError('Cancel failed: ' + e.message);
      btn.disabled = false;
    }
  }

  async function retry() {
    const btn = $('retry');
    btn.disabled = true;
    try {
      const body = await Kiln.post('/api/v1/builds/' + id + '/retry');
      location.href = '/ui/builds/' + encodeURIComponent(body.build.id);
    } catch (e) {
      Kiln.showError('Retry failed: ' + e.message);
      btn.disabled = false;
    }
  }

  async function copyImage() {
    const ok = await Kiln.copy($('b-image').textContent);
    $('copy-status').textContent = ok ? 'Copied' : 'Select the reference and copy it';
    setTimeout(() => { $('copy-status').textContent = ''; }, 4000);
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

  // The steps above the log: name (a button that folds the step's lines), state and duration.
  function renderSteps() {
    const frag = document.createDocumentFragment();
    for (const [name, s] of steps) {
      const li = document.createElement('li');
      li.className = 'step step-' + String(s.state || '').toLowerCase();
      li.dataset.step = name;
      const n = document.createElement('button');
      n.type = 'button';
      n.className = 'step-name';
      n.textContent = name;
      const group = groups.get(name);
      n.setAttribute('aria-controls', groupId(name));
      n.setAttribute('aria-expanded', group && group.el.classList.contains('collapsed') ? 'false' : 'true');
      n.title = 'Fold or unfold the lines of ' + name;
      n.addEventListener('click', () => toggleGroup(name));
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
  // A step's lines are one group: its header line (a button that folds the group), its body, and
  // its closing line (state and duration), which stays visible when folded. A line joins the
  // open group only while that group is the last thing in the log, so the DOM keeps the stored
  // order whatever arrives between.
  const groups = new Map();  // step name -> {el, body, header}
  let openGroup = null;      // the group of the step that started last and has not finished
  let tail = null;           // what is (or will be, once flushed) the log's last child

  const groupId = (name) => 'log-step-' + name.replace(/[^A-Za-z0-9_-]/g, '_');

  function toggleGroup(name, open) {
    const g = groups.get(name);
    if (!g) return;
    const collapse = open === undefined ? !g.el.classList.contains('collapsed') : !open;
    g.el.classList.toggle('collapsed', collapse);
    g.header.setAttribute('aria-expanded', collapse ? 'false' : 'true');
    for (const b of document.querySelectorAll('#steps .step-name[aria-controls="' + groupId(name) + '"]')) {
      b.setAttribute('aria-expanded', collapse ? 'false' : 'true');
    }
  }

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
      // stdout and stderr look alike (compilers write progress to stderr); the class stays for
      // whoever styles it. Kiln's own lines are set apart.
      if (d.stream === 'stderr') div.classList.add('stderr');
      else if (d.stream === 'system') div.classList.add('system');
      Kiln.appendAnsi(div, d.line);
    }
    return div;
  }

  // A new group for a step's header line `d`.
  function newGroup(d) {
    const el = document.createElement('div');
    el.className = 'log-group';
    el.id = groupId(d.step);
    el.dataset.step = d.step;
    const head = lineElement(d);
    const text = head.textContent;
    head.textContent = '';
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'step-toggle';
    button.textContent = text;
    button.setAttribute('aria-expanded', 'true');
    button.addEventListener('click', () => toggleGroup(d.step));
    head.appendChild(button);
    const body = document.createElement('div');
    body.className = 'log-group-body';
    el.append(head, body);
    const g = { el, body, header: button };
    groups.set(d.step, g);
    return g;
  }

  function queue(d) {
    pending.push(d);
    if (!frameQueued) {
      frameQueued = true;
      requestAnimationFrame(flush);
    }
  }

  // One DOM insertion per frame, however many lines arrived: lines are gathered in fragments, one
  // per run of lines with the same parent.
  function flush() {
    frameQueued = false;
    flushes++;
    const log = $('log');
    const batch = pending.length > MAX_LINES_PER_FRAME ? pending.splice(0, MAX_LINES_PER_FRAME) : pending;
    if (batch === pending) pending = [];
    let runParent = null;
    let run = document.createDocumentFragment();
    const added = [];
    const emit = (parent, el) => {
      if (parent !== runParent) {
        if (runParent) runParent.appendChild(run);
        runParent = parent;
        run = document.createDocumentFragment();
      }
      run.appendChild(el);
    };
    for (const d of batch) {
      const m = d.meta || {};
      if (d.stream === 'step' && m.phase === 'started' && !groups.has(d.step)) {
        const g = newGroup(d);
        emit(log, g.el);
        tail = g.el;
        openGroup = g;
        added.push(g.el.firstChild);
        continue;
      }
      const el = lineElement(d);
      added.push(el);
      const inGroup = openGroup && openGroup.el.dataset.step === d.step && tail === openGroup.el;
      if (inGroup && d.stream === 'step' && m.phase === 'finished') {
        emit(openGroup.el, el); // after the body: seen when folded
        openGroup = null;
      } else if (inGroup) {
        emit(openGroup.body, el);
      } else {
        emit(log, el);
        tail = el;
      }
    }
    if (runParent) runParent.appendChild(run);
    lineCount += batch.length;
    $('line-count').textContent = lineCount.toLocaleString();
    searchNewLines(added);
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

  // ---- search ---------------------------------------------------------------------------------
  // Lines whose text contains the term (any case) get the class `match`; the current one also
  // `current-match`, unfolded and scrolled to. Lines that arrive later are matched as they come.
  let term = '';
  let matches = [];
  let current = -1;

  function lineMatches(el) {
    return term !== '' && el.textContent.toLowerCase().includes(term);
  }

  function runSearch() {
    term = $('search-input').value.trim().toLowerCase();
    for (const el of matches) el.classList.remove('match', 'current-match');
    matches = term === '' ? [] : [...$('log').querySelectorAll('.line')].filter(lineMatches);
    for (const el of matches) el.classList.add('match');
    current = -1;
    if (matches.length) go(1); else renderCount();
  }

  function searchNewLines(added) {
    if (term === '') return;
    for (const el of added) {
      if (lineMatches(el)) { el.classList.add('match'); matches.push(el); }
    }
    renderCount();
  }

  function renderCount() {
    const count = $('search-count');
    if (term === '') count.textContent = '';
    else if (!matches.length) count.textContent = 'no match';
    else count.textContent = (current >= 0 ? current + 1 + ' of ' : '') + matches.length + (matches.length === 1 ? ' match' : ' matches');
  }

  // Moves to the next (+1) or previous (-1) match, around the ends.
  function go(step) {
    if (!matches.length) { renderCount(); return; }
    if (current >= 0) matches[current].classList.remove('current-match');
    current = (current + step + matches.length) % matches.length;
    const el = matches[current];
    el.classList.add('current-match');
    const group = el.closest('.log-group');
    if (group && group.classList.contains('collapsed')) toggleGroup(group.dataset.step, true);
    // Reading a match is reading, not following: new lines no longer pull the log down.
    stick = false;
    $('follow').hidden = false;
    el.scrollIntoView({ block: 'center' });
    lastTop = $('log').scrollTop;
    renderCount();
  }

  function setUpSearch() {
    let timer = null;
    $('search-input').addEventListener('input', () => {
      clearTimeout(timer);
      timer = setTimeout(runSearch, 150);
    });
    $('search').addEventListener('submit', (ev) => {
      ev.preventDefault();
      clearTimeout(timer);
      if ($('search-input').value.trim().toLowerCase() !== term) runSearch(); else go(1);
    });
    $('search-input').addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && ev.shiftKey) { ev.preventDefault(); go(-1); }
    });
    $('search-next').addEventListener('click', () => go(1));
    $('search-prev').addEventListener('click', () => go(-1));
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

  // ---- what became of the image: replication to the clusters' registries, rollouts -----------
  let outcomePoll = null;
  function outcomeItem(state, text, title) {
    const li = document.createElement('li');
    li.dataset.state = state;
    li.textContent = text;
    if (title) li.title = title;
    return li;
  }

  function renderOutcomes(syncs, rollouts, notifications) {
    syncs = syncs || [];
    rollouts = rollouts || [];
    notifications = notifications || [];
    $('outcomes').hidden = syncs.length === 0 && rollouts.length === 0 && notifications.length === 0;
    $('syncs').replaceChildren(...syncs.map((s) => {
      const what = s.state === 'Verified'
        ? 'verified · ' + Kiln.bytes(s.bytes_sent) + ' sent, ' + s.blobs_mounted + ' mounted, ' + s.blobs_skipped + ' already there · ' + Kiln.duration(s.duration_ms)
        : s.state === 'Failed' ? 'failed: ' + (s.reason || '') : 'copying…';
      const li = outcomeItem(s.state, 'copy to ' + s.cluster + ' — ' + what, s.target);
      li.dataset.cluster = s.cluster;
      li.classList.add('sync');
      return li;
    }));
    $('rollouts').replaceChildren(...rollouts.map((r) => {
      const by = r.requested_by ? ' by ' + Kiln.actor(r.requested_by) : '';
      const when = r.finished_at || r.started_at || r.created_at;
      const text = 'rollout to ' + r.cluster + ' ' + r.namespace + '/' + r.deployment + ' — ' + r.state.toLowerCase() +
        ' (' + r.trigger + by + ', ' + Kiln.ago(when) + ')' + (r.reason ? ': ' + r.reason : '');
      const li = outcomeItem(r.state, text, r.image);
      li.dataset.cluster = r.cluster;
      li.classList.add('rollout');
      return li;
    }));
    // What each target was told (the target shows as scheme and host: its URL is a credential).
    $('notifications').replaceChildren(...notifications.map((n) => {
      const tries = n.attempts > 1 ? ' after ' + n.attempts + ' attempts' : '';
      const text = n.event.replace('_', ' ') + ' → ' + n.kind + ' ' + n.target + ' — ' + n.outcome + (n.outcome === 'delivered' ? tries : '') + ' (' + Kiln.ago(n.at) + ')';
      const li = outcomeItem(n.outcome === 'delivered' ? 'Complete' : 'Failed', text);
      li.classList.add('notification');
      return li;
    }));
    // Replication and rollouts run after the build: look again while one is going on.
    clearTimeout(outcomePoll);
    const busy = syncs.some((s) => s.state === 'Running') || rollouts.some((r) => r.state === 'Pending' || r.state === 'Running');
    if (busy) outcomePoll = setTimeout(() => load().catch(() => {}), 2000);
  }

  async function load() {
    const body = await Kiln.apiJson('/api/v1/builds/' + id);
    build = body.build;
    if (finalState) build.state = finalState;
    else if (Kiln.isFinal(build.state)) finalState = build.state;
    renderHeader();
    stepsFromApi(body.steps);
    renderOutcomes(body.syncs, body.rollouts, body.notifications);
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
    canAct = await Kiln.may('developer');
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
    $('cancel').addEventListener('click', cancel);
    $('retry').addEventListener('click', retry);
    $('copy-image').addEventListener('click', copyImage);
    setUpSearch();
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
