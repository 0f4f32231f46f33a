// The app page: the app's settings (secrets only as set or not: the API never returns them), per
// Deployment that follows the app the release it runs (digest, build, since when, who asked)
// with the history of rollouts, a rollback to any earlier release for owners (after a
// confirmation), and the app's recent builds.
'use strict';

(() => {
  const { $ } = Kiln;
  const name = decodeURIComponent((location.pathname.match(/\/ui\/apps\/([^/]+)/) || [])[1] || '');
  // An admin's token sees every tenant: the tenant in the address picks the app.
  const tenant = new URLSearchParams(location.search).get('tenant');
  const scope = tenant ? '?tenant=' + encodeURIComponent(tenant) : '';
  const appPath = '/api/v1/apps/' + encodeURIComponent(name);
  const BUSY_MS = 1000;
  const IDLE_MS = 5000;

  let isOwner = false;
  let timer = null;

  // ---- settings -------------------------------------------------------------------------------
  function fact(dl, label, value, key) {
    const div = document.createElement('div');
    if (key) div.dataset.key = key;
    const dt = document.createElement('dt');
    dt.textContent = label;
    const dd = document.createElement('dd');
    if (value instanceof Node) dd.appendChild(value); else dd.textContent = value;
    div.append(dt, dd);
    dl.appendChild(div);
  }

  function code(text) {
    const c = document.createElement('code');
    c.textContent = text;
    return c;
  }

  const isSet = (yes) => (yes ? 'set' : 'not set');

  function renderSettings(app) {
    document.title = app.name + ' · Kiln';
    $('a-name').textContent = app.name;
    $('a-tenant').textContent = 'tenant ' + app.tenant;
    const dl = $('a-settings');
    dl.replaceChildren();
    fact(dl, 'Repository', code(app.git_url), 'git_url');
    fact(dl, 'GitLab project', app.project_path || '—', 'project_path');
    fact(dl, 'Branches built', code(app.branch_filter), 'branch_filter');
    fact(dl, 'Kind', app.kind, 'kind');
    fact(dl, 'Base image', app.base_image ? code(app.base_image) : '—', 'base_image');
    fact(dl, 'Image repository', code(app.image_repository), 'image_repository');
    // Secrets are write-only: the API says whether one is set, never what it is.
    fact(dl, 'Git token', isSet(app.has_git_token), 'git_token');
    fact(dl, 'GitLab API token', isSet(app.has_gitlab_token), 'gitlab_token');
    fact(dl, 'Webhook secret', 'set (never shown)', 'webhook_secret');
    for (const [key, value] of Object.entries(app.settings || {})) {
      const empty = value === null || value === undefined || (typeof value === 'object' && Object.keys(value).length === 0);
      if (empty) continue;
      fact(dl, key, typeof value === 'object' ? code(JSON.stringify(value)) : String(value), 'settings.' + key);
    }
    const created = document.createElement('time');
    Kiln.setTime(created, app.created_at);
    fact(dl, 'Created', created, 'created_at');
  }

  // ---- releases -------------------------------------------------------------------------------
  // Who made a rollout happen: the token that asked for a rollback, else the push that built it.
  function whoOf(rollout, build) {
    if (rollout.requested_by) return Kiln.actor(rollout.requested_by);
    if (build && build.commit_author) return 'automatic, pushed by ' + build.commit_author;
    return 'automatic (' + rollout.trigger + ')';
  }

  function buildLink(id) {
    return id ? Kiln.link('/ui/builds/' + encodeURIComponent(id), '#' + id) : document.createTextNode('—');
  }

  function digestCode(digest, image, cls) {
    const c = code(Kiln.shortDigest(digest));
    c.className = cls || '';
    c.title = image || digest;
    c.dataset.digest = digest;
    return c;
  }

  function renderRelease(r, builds) {
    const article = document.createElement('article');
    article.className = 'release';
    article.dataset.cluster = r.cluster;
    article.dataset.namespace = r.namespace;
    article.dataset.deployment = r.deployment;
    const h = document.createElement('h3');
    const muted = document.createElement('span');
    muted.className = 'muted';
    muted.textContent = 'container ' + r.container + ' · follows ' + r.policy + ' · ' + ((r.strategy && r.strategy.kind) || 'rolling') + ' releases';
    h.append(r.cluster + ' · ' + r.namespace + '/' + r.deployment + ' ', muted);
    article.appendChild(h);

    const current = document.createElement('p');
    current.className = 'current';
    const currentRollout = (r.history || []).find((x) => x.state === 'Complete');
    if (r.digest) {
      const since = document.createElement('time');
      Kiln.setTime(since, r.since);
      current.append('Runs ', digestCode(r.digest, r.image, 'current-digest'), ' from build ', buildLink(r.build),
        ', since ', since, ', ', whoOf(currentRollout || { trigger: '?' }, builds.get(r.build)));
    } else {
      current.textContent = 'Kiln has rolled nothing out here yet.';
    }
    article.appendChild(current);

    const table = document.createElement('table');
    table.className = 'history';
    const head = document.createElement('tr');
    for (const t of ['When', 'State', 'Image', 'Build', 'Trigger', 'By', '']) {
      const th = document.createElement('th');
      th.textContent = t;
      head.appendChild(th);
    }
    const thead = document.createElement('thead');
    thead.appendChild(head);
    const tbody = document.createElement('tbody');
    const offered = new Set([r.digest]); // one rollback button per earlier image, on its newest release
    for (const x of r.history || []) {
      const tr = document.createElement('tr');
      tr.dataset.rollout = x.id;
      tr.dataset.digest = x.digest;
      tr.dataset.state = x.state;
      const when = Kiln.cell(tr, Kiln.ago(x.created_at), 'muted');
      when.title = new Date(x.created_at).toLocaleString();
      const state = document.createElement('span');
      Kiln.stateBadge(state, x.state);
      const stateCell = Kiln.cell(tr, state);
      if (x.reason) {
        const why = document.createElement('div');
        why.className = 'muted why';
        why.textContent = x.reason;
        stateCell.appendChild(why);
      }
      // A blue-green or canary release's steps, each with its time and who promoted or aborted.
      if ((x.steps || []).length) {
        const details = document.createElement('details');
        details.className = 'steps';
        const summary = document.createElement('summary');
        summary.textContent = (x.strategy && x.strategy.kind ? x.strategy.kind + ': ' : '') + x.steps.length + ' steps';
        const list = document.createElement('ol');
        for (const st of x.steps) {
          const li = document.createElement('li');
          const at = document.createElement('time');
          Kiln.setTime(at, st.at);
          li.append(at, ' ' + st.step + (st.actor ? ' (by ' + Kiln.actor(st.actor) + ')' : ''));
          list.appendChild(li);
        }
        details.append(summary, list);
        stateCell.appendChild(details);
      }
      Kiln.cell(tr, digestCode(x.digest, x.image));
      Kiln.cell(tr, buildLink(x.build));
      Kiln.cell(tr, x.trigger);
      Kiln.cell(tr, whoOf(x, builds.get(x.build)));
      const action = Kiln.cell(tr, '');
      if (isOwner && x.state === 'Complete' && !offered.has(x.digest)) {
        offered.add(x.digest);
        const b = document.createElement('button');
        b.type = 'button';
        b.className = 'rollback';
        b.textContent = 'Roll back to this';
        b.setAttribute('aria-label', 'Roll back ' + r.cluster + ' to ' + (x.build ? 'build #' + x.build : Kiln.shortDigest(x.digest)));
        b.addEventListener('click', () => rollback(r, x, b));
        action.appendChild(b);
      }
      tbody.appendChild(tr);
    }
    table.append(thead, tbody);
    article.appendChild(table);
    return article;
  }

  async function rollback(release, rollout, button) {
    const what = rollout.build ? 'build #' + rollout.build + ' (' + Kiln.shortDigest(rollout.digest) + ')' : Kiln.shortDigest(rollout.digest);
    const text = 'Roll back ' + name + ' in cluster ' + release.cluster + ' to ' + what + '? Every Deployment in ' +
      release.cluster + ' that follows ' + name + ' is set to that image, and watched until it is available.';
    if (!(await Kiln.confirm(text, 'Roll back'))) return;
    button.disabled = true;
    try {
      await Kiln.post(appPath + '/rollback' + scope, { digest: rollout.digest, cluster: release.cluster });
      $('rollback-status').textContent = 'Rollback of ' + release.cluster + ' to ' + what + ' queued.';
      refreshSoon(0);
    } catch (e) {
      Kiln.showError('Rollback refused: ' + e.message);
      button.disabled = false;
    }
  }

  async function refresh() {
    const p = new URLSearchParams({ app: name, limit: '20' });
    if (tenant) p.set('tenant', tenant);
    const [releases, builds] = await Promise.all([
      Kiln.apiJson(appPath + '/releases' + scope),
      Kiln.apiJson('/api/v1/builds?' + p.toString()),
    ]);
    const known = new Map((releases.builds || []).map((b) => [b.id, b]));
    $('releases').replaceChildren(...releases.releases.map((r) => renderRelease(r, known)));
    $('no-releases').hidden = releases.releases.length > 0;
    const frag = document.createDocumentFragment();
    for (const b of builds.builds) frag.appendChild(Kiln.buildRow(b));
    $('builds').replaceChildren(frag);
    $('empty').hidden = builds.builds.length > 0;
    // While a rollout is on its way, look often: the page shows it land.
    const busy = releases.releases.some((r) => (r.history || []).some((x) => x.state === 'Pending' || x.state === 'Running'));
    document.body.dataset.releases = busy ? 'busy' : 'settled';
    return busy;
  }

  function refreshSoon(ms) {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      let busy = false;
      if (!document.hidden) {
        try { busy = await refresh(); } catch (e) {
          if (e instanceof Kiln.HttpError && e.status === 401) return; // the token form is back
          Kiln.showError('Could not refresh: ' + e.message);
        }
      }
      refreshSoon(busy ? BUSY_MS : IDLE_MS);
    }, ms);
  }

  Kiln.boot(async () => {
    if (!name) throw new Error('no app name in the address');
    isOwner = await Kiln.may('owner');
    const { app } = await Kiln.apiJson(appPath + scope);
    renderSettings(app);
    const busy = await refresh();
    $('app-section').hidden = false;
    refreshSoon(busy ? BUSY_MS : IDLE_MS);
    document.addEventListener('visibilitychange', () => { if (!document.hidden) refreshSoon(0); });
  });
})();
